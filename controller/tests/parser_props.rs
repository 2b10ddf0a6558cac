//! Property tests for the controller's parsers of bytes that come from the network or an
//! operator: CSRs and enrollment tokens (from any client of the open Enrollment service),
//! heartbeats (protobuf → lease and health evaluation), protobuf timestamps, and durations
//! and sizes and labels given on the command line. Arbitrary input never panics; what is accepted keeps the
//! parser's promise.

use std::sync::Arc;

use drover_controller::health::clock::FakeClock;
use drover_controller::health::evaluate::Thresholds;
use drover_controller::health::leases::Leases;
use drover_controller::pki::policy::verify_csr;
use drover_controller::timefmt;
use drover_controller::tokens::{self, Token};
use drover_proto::v1;
use proptest::prelude::*;
use secrecy::ExposeSecret;

fn csr() -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let der = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let bits = verify_csr(&der).unwrap().public_key_bits().to_vec();
    (der, bits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_csr_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(verify_csr(&bytes).is_err());
    }

    /// A real CSR with bytes changed or cut: refused, or (a change outside what is signed
    /// that still parses) accepted with the original key and nothing else.
    #[test]
    fn mutated_csrs_are_refused_or_keep_their_key(
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
    ) {
        let (mut der, bits) = csr();
        for (at, value) in flips {
            let i = at.index(der.len());
            der[i] = value;
        }
        if let Some(at) = cut {
            der.truncate(at.index(der.len()));
        }
        if let Ok(v) = verify_csr(&der) {
            prop_assert_eq!(v.public_key_bits(), bits.as_slice());
        }
    }

    #[test]
    fn enrollment_tokens_never_panic(text in "(drover1\\.)?[0-9a-f.A-Za-z_-]{0,120}|.{0,120}") {
        if let Ok(t) = Token::parse(&text) {
            prop_assert_eq!(t.id.len(), 16);
            prop_assert_eq!(t.ca_fingerprint.len(), 64);
            prop_assert!(t.ca_fingerprint.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    #[test]
    fn generated_tokens_parse_back(fp in "[0-9a-f]{64}") {
        let (text, token) = tokens::generate(&fp);
        let parsed = Token::parse(text.expose_secret()).unwrap();
        prop_assert_eq!(&parsed.id, &token.id);
        prop_assert_eq!(parsed.ca_fingerprint, fp);
        prop_assert_eq!(parsed.secret.expose_secret(), token.secret.expose_secret());
    }

    /// `--ttl`, `--since`: never a panic; an accepted duration is positive.
    #[test]
    fn cli_durations_never_panic(text in "[0-9]{0,25}[smhdwy]?|.{0,30}") {
        if let Ok(d) = tokens::parse_duration(&text) {
            prop_assert!(d.is_positive(), "{:?} -> {}", text, d);
        }
    }

    /// Values up to the 36500-day bound mean what they say; longer and negative ones are
    /// refused.
    #[test]
    fn small_cli_durations_are_exact(
        n in 1i64..1_000_000,
        unit in proptest::sample::select(vec![("s", 1i64), ("m", 60), ("h", 3600), ("d", 86400)]),
    ) {
        let parsed = tokens::parse_duration(&format!("{n}{}", unit.0));
        if n * unit.1 <= tokens::MAX_DURATION.whole_seconds() {
            prop_assert_eq!(parsed.unwrap().whole_seconds(), n * unit.1);
        } else {
            prop_assert!(parsed.is_err());
        }
        let negative = format!("-{n}{}", unit.0);
        prop_assert!(tokens::parse_duration(&negative).is_err());
    }

    /// `--label`, `--selector`: an accepted label is a clean key and a printable value.
    #[test]
    fn cli_labels_are_clean(text in "[a-z=./_-]{0,20}|.{0,80}") {
        if let Ok((k, v)) = tokens::parse_label(&text) {
            prop_assert!(!k.is_empty() && k.len() <= 63);
            prop_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b)));
            prop_assert!(v.len() <= 63 && !v.chars().any(char::is_control));
        }
    }

    #[test]
    fn proto_timestamps_never_panic(seconds in any::<i64>(), nanos in any::<i32>()) {
        let t = prost_types::Timestamp { seconds, nanos };
        if let Some(at) = timefmt::from_proto(&t) {
            prop_assert_eq!(at.unix_timestamp(), seconds);
        }
    }

    /// Whatever an enrolled agent sends as a heartbeat, the conversion takes or refuses it,
    /// and the lease takes what it accepted and the health evaluation runs, without a panic.
    #[test]
    fn heartbeats_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ips in proptest::collection::vec(".{0,40}", 0..3),
    ) {
        if let Ok(hb) = <v1::Heartbeat as prost::Message>::decode(bytes.as_slice())
            && let Ok(hb) = drover_controller::health::report::Heartbeat::try_from(hb)
        {
            let start = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
            let clock = Arc::new(FakeClock::new(start));
            let leases = Leases::new(clock.clone());
            leases.hello("a1", hb.applied_generation, &ips);
            let _ = leases.heartbeat("a1", &hb, &ips);
            let _ = leases.evaluate("a1", None, &Thresholds::default());
            clock.advance(time::Duration::hours(1));
            let _ = leases.evaluate("a1", None, &Thresholds::default());
        }
    }
}
