//! `drover token create|list|revoke`.

use std::collections::HashMap;

use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::{parse_duration, parse_label};

/// `drover token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token; prints only the token on stdout.
    Create(CreateArgs),
    /// List enrollment tokens (never their secrets).
    List(ListArgs),
    /// Revoke an enrollment token by id.
    Revoke(RevokeArgs),
}

/// Arguments of `drover token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Label given to agents enrolled with this token, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Lifetime, e.g. `30m`, `1h`, `2d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: time::Duration,
    /// How many agents may enroll with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: u32,
}

/// Arguments of `drover token list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `drover token revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The token id (second part of the token, shown by `drover token list`).
    pub id: String,
}

/// Whether a token still admits an enrollment: `revoked`, `expired`, `used up` or `active`
/// (in the order the controller checks them).
pub fn token_status(t: &v1::TokenInfo, now: time::OffsetDateTime) -> &'static str {
    let expired = t
        .expires_at
        .as_ref()
        .and_then(timefmt::from_proto)
        .is_some_and(|at| now >= at);
    if t.revoked {
        "revoked"
    } else if expired {
        "expired"
    } else if t.uses_left == 0 {
        "used up"
    } else {
        "active"
    }
}

/// How to see whether a token call whose answer was lost took effect.
const CHECK_TOKENS: &str = "`drover token list`";

/// Runs a token subcommand.
pub async fn run(cli: &super::Cli, cmd: &TokenCommand) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    match cmd {
        TokenCommand::Create(a) => {
            let resp = client
                .create_token(v1::CreateTokenRequest {
                    labels: a.labels.iter().cloned().collect::<HashMap<_, _>>(),
                    ttl_seconds: u64::try_from(a.ttl.whole_seconds()).unwrap_or(0),
                    uses: a.uses,
                })
                .await
                .map_err(|s| super::change_error("create token", s, CHECK_TOKENS))?
                .into_inner();
            if let Some(info) = &resp.info {
                eprintln!(
                    "created enrollment token {} (uses: {}, expires {})",
                    info.id,
                    info.uses_left,
                    info.expires_at
                        .as_ref()
                        .and_then(timefmt::from_proto)
                        .map(timefmt::rfc3339)
                        .unwrap_or_default()
                );
            }
            drover_proto::stdout::line(&resp.token)?;
        }
        TokenCommand::List(a) => {
            let tokens = client
                .list_tokens(v1::ListTokensRequest {})
                .await
                .map_err(|s| super::status_error("list tokens", s))?
                .into_inner()
                .tokens;
            let now = time::OffsetDateTime::now_utc();
            let ts = |t: &Option<prost_types::Timestamp>| {
                t.as_ref()
                    .and_then(timefmt::from_proto)
                    .map(timefmt::rfc3339)
                    .unwrap_or_default()
            };
            match a.output {
                Format::Json => {
                    let arr: Vec<serde_json::Value> = tokens
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "id": t.id,
                                "labels": t.labels,
                                "created_at": ts(&t.created_at),
                                "expires_at": ts(&t.expires_at),
                                "uses_left": t.uses_left,
                                "revoked": t.revoked,
                                "status": token_status(t, now),
                            })
                        })
                        .collect();
                    drover_proto::stdout::line(&serde_json::to_string_pretty(&arr)?)?;
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                output::labels(&t.labels),
                                ts(&t.expires_at),
                                t.uses_left.to_string(),
                                token_status(t, now).to_string(),
                            ]
                        })
                        .collect();
                    output::print(
                        &output::table(&["ID", "LABELS", "EXPIRES", "USES LEFT", "STATUS"], &rows),
                        false,
                    )?;
                }
            }
        }
        TokenCommand::Revoke(a) => {
            client
                .revoke_token(v1::RevokeTokenRequest { id: a.id.clone() })
                .await
                .map_err(|s| {
                    super::change_error(&format!("revoke token {}", a.id), s, CHECK_TOKENS)
                })?;
            eprintln!("revoked enrollment token {}", a.id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use drover_proto::v1;

    #[test]
    fn status_says_why_a_token_no_longer_works() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |d: i64| {
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + d,
                nanos: 0,
            })
        };
        let t = |uses_left, expires_at, revoked| v1::TokenInfo {
            uses_left,
            expires_at,
            revoked,
            ..Default::default()
        };
        assert_eq!(super::token_status(&t(1, at(60), false), now), "active");
        assert_eq!(super::token_status(&t(0, at(60), false), now), "used up");
        assert_eq!(super::token_status(&t(1, at(0), false), now), "expired");
        assert_eq!(super::token_status(&t(0, at(-60), false), now), "expired");
        assert_eq!(super::token_status(&t(0, at(60), true), now), "revoked");
    }
}
