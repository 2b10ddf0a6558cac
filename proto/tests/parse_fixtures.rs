//! `config.toml` fixtures: what parses, what warns (snapshots), what is refused and where.

use drover_proto::spec::{ParseMode, PullPolicy, SpecError, parse_config, parse_with};
use secrecy::ExposeSecret;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn warnings_of(name: &str) -> Vec<String> {
    parse_config(&fixture(name), name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn error_of(name: &str) -> SpecError {
    match parse_config(&fixture(name), name) {
        Ok(_) => panic!("{name}: parsed, expected an error"),
        Err(e) => e,
    }
}

#[test]
fn register_default_parses_quietly() {
    let parsed = parse_config(&fixture("register_default.toml"), "config.toml").unwrap();
    let c = &parsed.config;
    assert_eq!(c.concurrent, Some(4));
    assert_eq!(c.runners.len(), 1);
    let r = &c.runners[0];
    assert_eq!(r.name, "edge-box-01");
    assert_eq!(r.executor, "docker");
    assert_eq!(
        r.token.as_ref().map(|t| t.expose_secret().to_string()),
        Some("glrt-t1_AbCdEfGhIjKlMnOpQrSt".to_string())
    );
    assert_eq!(r.token_expires_at.as_deref(), Some("0001-01-01T00:00:00Z"));
    let d = r.docker.as_ref().unwrap();
    assert_eq!(d.image.as_deref(), Some("alpine:3.20"));
    assert_eq!(d.volumes, vec!["/cache".to_string()]);
    // Only the session server is reported: empty cache tables, `false` and `0` configure
    // nothing.
    insta::assert_debug_snapshot!(warnings_of("register_default.toml"));
}

#[test]
fn every_key_parses_and_warns_once_per_ignored_key() {
    let parsed = parse_config(&fixture("every_key.toml"), "every_key.toml").unwrap();
    let c = &parsed.config;
    assert_eq!(c.concurrent, Some(8));
    assert_eq!(c.check_interval, Some(5));
    assert_eq!(c.runners.len(), 2);
    let r = &c.runners[0];
    assert_eq!(r.limit, Some(2));
    assert_eq!(r.output_limit, Some(8192));
    assert_eq!(
        r.tls_ca_file.as_deref(),
        Some("/etc/gitlab-runner/certs/ca.crt")
    );
    let d = r.docker.as_ref().unwrap();
    assert_eq!(
        d.pull_policy.as_ref().unwrap().policies(),
        vec![PullPolicy::IfNotPresent, PullPolicy::Always]
    );
    assert_eq!(d.shm_size, Some(268_435_456));
    assert_eq!(d.privileged, Some(true));
    assert_eq!(
        c.runners[1]
            .docker
            .as_ref()
            .unwrap()
            .pull_policy
            .as_ref()
            .unwrap()
            .policies(),
        vec![PullPolicy::Never]
    );
    let w = warnings_of("every_key.toml");
    let mut paths: Vec<&str> = w.iter().map(|s| s.as_str()).collect();
    paths.dedup();
    assert_eq!(paths.len(), w.len(), "a warning repeated: {w:#?}");
    insta::assert_debug_snapshot!(w);
}

#[test]
fn other_executor_is_refused_naming_runner_and_line() {
    let e = error_of("bad_executor.toml");
    assert_eq!(
        e.to_string(),
        "bad_executor.toml:7:14: runners[0].executor: runner \"shell-runner\": executor \"shell\" \
         is not supported; only \"docker\" is"
    );
}

#[test]
fn missing_token_is_refused() {
    let e = error_of("missing_token.toml");
    assert_eq!(
        e.to_string(),
        "missing_token.toml:1:1: runners[0].token: runner \"no-token\": token missing"
    );
}

#[test]
fn missing_url_names_the_second_runner() {
    let e = error_of("missing_url.toml");
    assert_eq!(
        e.to_string(),
        "missing_url.toml:7:1: runners[1].url: runner \"no-url\": url missing"
    );
}

#[test]
fn bad_url_is_refused() {
    let e = error_of("bad_url.toml");
    assert_eq!(
        e.to_string(),
        "bad_url.toml:3:9: runners[0].url: runner \"bad-url\": url \"gitlab.example.com\": must \
         start with http:// or https://"
    );
}

#[test]
fn bad_pull_policy_lists_allowed_values() {
    let e = error_of("bad_pull_policy.toml");
    let SpecError::Syntax { line, message, .. } = &e else {
        panic!("expected a syntax error, got {e:?}");
    };
    assert_eq!(*line, 8, "{e}");
    assert!(
        message.contains("\"sometimes\"") && message.contains("always, if-not-present, never"),
        "{e}"
    );
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let e = error_of("syntax_error.toml");
    let SpecError::Syntax { file, line, .. } = &e else {
        panic!("expected a syntax error, got {e:?}");
    };
    assert_eq!(file, "syntax_error.toml");
    assert_eq!(*line, 5, "{e}");
    assert!(e.to_string().starts_with("syntax_error.toml:5:"), "{e}");
}

#[test]
fn wrong_type_names_the_line() {
    let e = error_of("wrong_type.toml");
    let SpecError::Syntax { line, message, .. } = &e else {
        panic!("expected a type error, got {e:?}");
    };
    assert_eq!(*line, 1, "{e}");
    assert!(message.contains("\"four\""), "{e}");
}

#[test]
fn zero_concurrent_is_refused() {
    let e = error_of("zero_concurrent.toml");
    assert_eq!(
        e.to_string(),
        "zero_concurrent.toml:1:14: concurrent: concurrent = 0: must be between 1 and 1000"
    );
}

#[test]
fn empty_file_has_nothing_to_serve() {
    let e = parse_config("", "empty.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "empty.toml: runners: no [[runners]] table: nothing to serve"
    );
}

#[test]
fn debug_output_hides_tokens() {
    let parsed = parse_config(&fixture("every_key.toml"), "every_key.toml").unwrap();
    let dbg = format!("{:?}", parsed.config);
    assert!(!dbg.contains("glrt-secret-one"), "{dbg}");
}

const SPEC: &str = r#"
[[runners]]
name = "lab-docker"
url = "https://gitlab.example.com"
registration_token = "GR1348941abc"
tag_list = ["edge", "arm64"]
run_untagged = false
limit = 2
executor = "docker"
[runners.selector]
site = "lab"
[runners.docker]
image = "alpine:3.20"
pull_policy = "if-not-present"
"#;

#[test]
fn spec_mode_accepts_registration_token_and_drover_keys() {
    let parsed = parse_with(SPEC, "runners.toml", ParseMode::Spec).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let r = &parsed.config.runners[0];
    assert_eq!(r.tag_list, vec!["edge".to_string(), "arm64".to_string()]);
    assert_eq!(r.selector.get("site").map(String::as_str), Some("lab"));
}

#[test]
fn standalone_mode_refuses_a_spec_without_token_and_warns_on_spec_keys() {
    let e = parse_config(SPEC, "runners.toml").unwrap_err();
    assert!(e.to_string().contains("token missing"), "{e}");
    let with_token = SPEC.replace(
        "registration_token = \"GR1348941abc\"",
        "token = \"glrt-x\"",
    );
    let w: Vec<String> = parse_config(&with_token, "config.toml")
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        w,
        vec![
            "config.toml:6: runners[0].tag_list: only used by `drover runner apply`; ignored in \
             standalone mode",
            "config.toml:10: runners[0].selector: only used by `drover runner apply`; ignored in \
             standalone mode",
        ]
    );
}

#[test]
fn spec_mode_needs_some_token() {
    let no_token = SPEC.replace("registration_token = \"GR1348941abc\"\n", "");
    let e = parse_with(&no_token, "runners.toml", ParseMode::Spec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "runners.toml:2:1: runners[0].token: runner \"lab-docker\": token, registration_token or \
         runner_creation_token required"
    );
    // A runner-creation token is enough; its runner_type is checked.
    let creation = SPEC.replace(
        "registration_token = \"GR1348941abc\"\n",
        "runner_creation_token = \"glpat-x\"\nrunner_type = \"project_type\"\nproject_id = 7\n",
    );
    parse_with(&creation, "runners.toml", ParseMode::Spec).unwrap();
    let bad = creation.replace("project_id = 7\n", "");
    let e = parse_with(&bad, "runners.toml", ParseMode::Spec).unwrap_err();
    assert!(
        e.to_string()
            .contains("runner_type \"project_type\" needs project_id"),
        "{e}"
    );
}

/// gitlab-runner's documented examples and `register` output, in both modes.
#[test]
fn gitlab_runner_files_parse_in_both_modes() {
    for name in [
        "gitlab-runner/advanced_configuration.toml",
        "gitlab-runner/register_free_text_names.toml",
        "register_default.toml",
    ] {
        let text = fixture(name);
        for mode in [ParseMode::Standalone, ParseMode::Spec] {
            let parsed = parse_with(&text, name, mode).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            assert!(!parsed.config.runners.is_empty(), "{name}");
        }
    }
    let parsed =
        parse_config(&fixture("gitlab-runner/register_free_text_names.toml"), "c").unwrap();
    let names: Vec<&str> = parsed
        .config
        .runners
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "gitlab runner for ci",
            "Bob's runner: build/test (prod) #2 — 本番 🚀",
            "terraform/openstack ../../etc"
        ]
    );
}

fn spec_error(text: &str) -> String {
    match parse_with(text, "bad.toml", ParseMode::Spec) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn type_errors_name_the_key_path() {
    let text = SPEC.replace(
        "pull_policy = \"if-not-present\"",
        "pull_policy = \"sometimes\"",
    );
    assert_eq!(
        spec_error(&text),
        "bad.toml:14:15: runners[0].docker.pull_policy: unknown pull policy \"sometimes\", \
         expected one of: always, if-not-present, never"
    );
    let e = error_of("bad_pull_policy.toml").to_string();
    assert!(
        e.starts_with(
            "bad_pull_policy.toml:8:19: runners[0].docker.pull_policy: unknown pull policy"
        ),
        "{e}"
    );
    let text = SPEC.replace("limit = 2", "limit = \"two\"");
    assert!(
        spec_error(&text).starts_with("bad.toml:8:9: runners[0].limit: "),
        "{}",
        spec_error(&text)
    );
    let text = SPEC.replace("run_untagged = false", "run_untagged = \"no\"");
    assert!(spec_error(&text).starts_with("bad.toml:7:16: runners[0].run_untagged: "));
}

#[test]
fn one_line_values_refuse_control_characters() {
    let text = SPEC.replace("alpine:3.20", "alpine:3.20\\nevil");
    assert_eq!(
        spec_error(&text),
        "bad.toml:13:9: runners[0].docker.image: value holds the control character '\\n' at \
         byte 11; a one-line value must hold none"
    );
    let text = SPEC.replace(
        "https://gitlab.example.com",
        "https://gitlab.example.com\\u001b]0;x\\u0007",
    );
    assert!(
        spec_error(&text).contains("runners[0].url: value holds the control character '\\u{1b}'")
    );
    // Scripts and free text may span lines.
    let text = SPEC.replace(
        "executor = \"docker\"",
        "executor = \"docker\"\npre_build_script = '''\necho one\n\techo two\n'''\ndescription = \"a\\nb\"",
    );
    parse_with(&text, "ok.toml", ParseMode::Spec).unwrap();
    // So may sections Drover does not read, such as a PEM key for the GCS cache.
    let text = SPEC.replace(
        "[runners.selector]",
        "[runners.cache.gcs]\nPrivateKey = \"-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n\"\n[runners.selector]",
    );
    parse_with(&text, "ok.toml", ParseMode::Spec).unwrap();
}

#[test]
fn sizes_and_counts_are_bounded() {
    use drover_proto::spec::limits;
    let big = format!("{SPEC}#{}\n", "x".repeat(limits::MAX_FILE_BYTES));
    assert_eq!(
        spec_error(&big),
        format!(
            "bad.toml: file is {} bytes; at most 1048576 bytes (1 MiB) are accepted",
            big.len()
        )
    );
    let long_image = SPEC.replace("alpine:3.20", &"a".repeat(limits::MAX_VALUE_BYTES + 1));
    assert_eq!(
        spec_error(&long_image),
        "bad.toml:13:9: runners[0].docker.image: value of 4097 bytes; at most 4096 bytes are \
         accepted"
    );
    let many_tags: Vec<String> = (0..=limits::MAX_ITEMS)
        .map(|i| format!("\"t{i}\""))
        .collect();
    let text = SPEC.replace(
        "[\"edge\", \"arm64\"]",
        &format!("[{}]", many_tags.join(",")),
    );
    assert_eq!(
        spec_error(&text),
        "bad.toml:6:12: runners[0].tag_list: 257 items; at most 256 are accepted"
    );
    let runner = SPEC.replace("name = \"lab-docker\"", "name = \"r{}\"");
    let many: String = (0..=limits::MAX_RUNNERS)
        .map(|i| runner.replace("{}", &i.to_string()))
        .collect();
    assert!(many.len() < limits::MAX_FILE_BYTES);
    assert_eq!(
        spec_error(&many),
        "bad.toml:2:1: runners: 1001 items; at most 1000 are accepted"
    );
    let long_name = SPEC.replace("lab-docker", &"é".repeat(limits::MAX_NAME_CHARS + 1));
    assert_eq!(
        spec_error(&long_name),
        "bad.toml:3:8: runners[0].name: name of 256 characters; at most 255 are accepted"
    );
    let ok_name = SPEC.replace("lab-docker", &"é".repeat(limits::MAX_NAME_CHARS));
    parse_with(&ok_name, "ok.toml", ParseMode::Spec).unwrap();
}

#[test]
fn selectors_are_validated_and_bounded() {
    for (selector, want) in [
        (
            "\"\" = \"x\"",
            "bad.toml:11:6: runners[0].selector.\"\": runner \"lab-docker\": label key \"\" must be 1-63 \
             characters of A-Z a-z 0-9 . _ / -",
        ),
        (
            "\"<script>\" = \"x\"",
            "bad.toml:11:14: runners[0].selector.\"<script>\": runner \"lab-docker\": label key \
             \"<script>\" must be 1-63 characters of A-Z a-z 0-9 . _ / -",
        ),
        (
            "site = \"\\u001b[31mlab\"",
            "bad.toml:11:8: runners[0].selector.site: runner \"lab-docker\": label value \
             \"\\u{1b}[31mlab\" must be at most 63 printable characters",
        ),
    ] {
        let text = SPEC.replace("site = \"lab\"", selector);
        assert_eq!(spec_error(&text), want);
    }
    let many: Vec<String> = (0..=drover_proto::spec::limits::MAX_LABELS)
        .map(|i| format!("k{i} = \"v\""))
        .collect();
    let text = SPEC.replace("site = \"lab\"", &many.join("\n"));
    assert_eq!(
        spec_error(&text),
        "bad.toml:10:10: runners[0].selector: 65 entries; at most 64 are accepted"
    );
}

#[test]
fn tags_are_what_gitlab_keeps() {
    let text = SPEC.replace("[\"edge\", \"arm64\"]", "[\"edge\", \"arm64,x86\"]");
    assert_eq!(
        spec_error(&text),
        "bad.toml:6:21: runners[0].tag_list[1]: runner \"lab-docker\": tag \"arm64,x86\": a tag \
         is not blank and holds no comma"
    );
    let text = SPEC.replace("[\"edge\", \"arm64\"]", "[\"edge\", \" \"]");
    assert!(spec_error(&text).contains("runners[0].tag_list[1]"));
    let text = SPEC.replace(
        "[\"edge\", \"arm64\"]",
        "[\"edge\", \"gpu 24 GB\", \"本番\"]",
    );
    parse_with(&text, "ok.toml", ParseMode::Spec).unwrap();
}

/// `[runners.drover_gc]` parses in both modes, quietly; a bad value names file, line,
/// column and key.
#[test]
fn drover_gc_parses_in_both_modes_and_bad_values_name_the_key() {
    let gc = "[runners.drover_gc]\nvolumes_max_size = \"512MiB\"\nvolumes_max_idle = \"24h\"\n\
              images_max_size = \"1g\"\nimages_max_idle = \"0\"\nremove_foreign_images = true\n";
    let spec = format!("{SPEC}{gc}");
    let parsed = parse_with(&spec, "runners.toml", ParseMode::Spec).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let g = parsed.config.runners[0].drover_gc.clone().unwrap();
    assert_eq!(g.volumes_max_size.as_deref(), Some("512MiB"));
    assert_eq!(
        g.volumes_max_idle.map(|d| d.0),
        Some(std::time::Duration::from_secs(86400))
    );
    assert_eq!(
        g.images_max_idle.map(|d| d.0),
        Some(std::time::Duration::ZERO)
    );
    assert_eq!(g.remove_foreign_images, Some(true));
    let standalone = spec
        .replace(
            "registration_token = \"GR1348941abc\"",
            "token = \"glrt-x\"",
        )
        .replace("[runners.selector]\nsite = \"lab\"\n", "")
        .replace("tag_list = [\"edge\", \"arm64\"]\n", "");
    let parsed = parse_config(&standalone, "config.toml").unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert!(parsed.config.runners[0].drover_gc.is_some());

    let bad = spec.replace("\"512MiB\"", "\"lots\"");
    assert_eq!(
        spec_error(&bad),
        "bad.toml:16:20: runners[0].drover_gc.volumes_max_size: runner \"lab-docker\": \
         volumes_max_size = \"lots\": expected a size like 512m, 2g or 500MiB"
    );
    let bad = spec.replace("\"24h\"", "\"a day\"");
    assert!(
        spec_error(&bad).starts_with("bad.toml:17:20: runners[0].drover_gc.volumes_max_idle: "),
        "{}",
        spec_error(&bad)
    );
    let bad = spec.replace(
        "remove_foreign_images = true",
        "remove_foreign_images = \"yes\"",
    );
    assert!(
        spec_error(&bad)
            .starts_with("bad.toml:20:25: runners[0].drover_gc.remove_foreign_images: "),
        "{}",
        spec_error(&bad)
    );
    // An unknown key in the table is warned about like any other.
    let typo = standalone.replace("remove_foreign_images", "remove_foreign_imagez");
    let w = parse_config(&typo, "config.toml").unwrap().warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].to_string()
            .contains("runners[0].drover_gc.remove_foreign_imagez"),
        "{}",
        w[0]
    );
}

/// `[runners.drover_images] required` parses quietly; a bad reference names file, line,
/// column, key and index.
#[test]
fn drover_images_parse_and_bad_references_name_the_entry() {
    let spec = format!("{SPEC}[runners.drover_images]\nrequired = [\"app:1\", \"tools:2\"]\n");
    let parsed = parse_with(&spec, "runners.toml", ParseMode::Spec).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(
        parsed.config.runners[0]
            .drover_images
            .as_ref()
            .map(|i| i.required.clone()),
        Some(vec!["app:1".to_string(), "tools:2".to_string()])
    );
    let bad = spec.replace("\"tools:2\"", "\"tools 2\"");
    let err = spec_error(&bad);
    assert!(
        err.starts_with("bad.toml:16:22: runners[0].drover_images.required[1]: runner \"lab-docker\": image \"tools 2\": "),
        "{err}"
    );
    let bad = spec.replace("[\"app:1\", \"tools:2\"]", "\"app:1\"");
    assert!(
        spec_error(&bad).contains("runners[0].drover_images.required"),
        "{}",
        spec_error(&bad)
    );
}

const S3_CACHE: &str = "[runners.cache]\nType = \"s3\"\nShared = true\nPath = \"ci\"\nMaxUploadedArchiveSize = 1000\n[runners.cache.s3]\nServerAddress = \"minio:9000\"\nAccessKey = \"AKIA1\"\nSecretKey = \"sekrit\"\nBucketName = \"cache\"\nInsecure = true\n[runners.selector]";

#[test]
fn s3_cache_parses_with_gitlab_runner_keys_and_bad_values_name_the_key() {
    let text = SPEC.replace("[runners.selector]", S3_CACHE);
    let parsed = parse_with(&text, "ok.toml", ParseMode::Spec).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let cache = parsed.config.runners[0].cache.as_ref().unwrap();
    let s3 = cache.s3_access_keys().unwrap();
    assert_eq!(s3.endpoint(), "http://minio:9000");
    assert_eq!(s3.secret_key.as_ref().unwrap().expose_secret(), "sekrit");
    assert!(cache.is_shared());
    assert_eq!(cache.max_upload_bytes(), Some(1000));
    assert!(!format!("{parsed:?}").contains("sekrit"));
    // Standalone mode reads the same keys.
    let standalone = text.replace("registration_token", "token");
    parse_config(&standalone, "config.toml").unwrap();

    let bad = |from: &str, to: &str| {
        spec_error(&SPEC.replace("[runners.selector]", &S3_CACHE.replace(from, to)))
    };
    assert!(
        bad("Insecure = true", "Insecure = \"yes\"")
            .starts_with("bad.toml:20:12: runners[0].cache.s3.Insecure: invalid type"),
        "{}",
        bad("Insecure = true", "Insecure = \"yes\"")
    );
    assert_eq!(
        bad("Type = \"s3\"", "Type = \"s4\""),
        "bad.toml:11:8: runners[0].cache.Type: runner \"lab-docker\": cache Type \"s4\" is not known; expected \"s3\", \"gcs\" or \"azure\" (or none for a cache on this box)"
    );
    assert!(bad("BucketName = \"cache\"", "").contains("runners[0].cache.s3.BucketName"));
    assert!(
        bad("minio:9000", "http://minio:9000")
            .contains("runners[0].cache.s3.ServerAddress: runner \"lab-docker\": ServerAddress \"http://minio:9000\": expected host[:port]")
    );
    assert!(
        bad("Insecure = true", "AuthenticationType = \"oauth\"")
            .contains("AuthenticationType \"oauth\" is not known")
    );
    assert!(
        bad(
            "Insecure = true",
            "AuthenticationType = \"access-key\"\nServerSideEncryption = \"rot13\""
        )
        .contains("ServerSideEncryption \"rot13\"")
    );
    assert!(bad("= 1000", "= -1").contains("MaxUploadedArchiveSize = -1"));
    assert!(
        bad(
            "SecretKey = \"sekrit\"",
            "AuthenticationType = \"access-key\""
        )
        .contains("needs AccessKey and SecretKey")
    );

    // IAM (no keys) and gcs are warned about, not refused: the cache stays on the box.
    let iam = SPEC.replace(
        "[runners.selector]",
        &S3_CACHE.replace("AccessKey = \"AKIA1\"\n", ""),
    );
    let w = parse_with(&iam, "iam.toml", ParseMode::Spec)
        .unwrap()
        .warnings;
    assert!(
        w[0].to_string()
            .contains("runners[0].cache.s3: IAM authentication"),
        "{w:?}"
    );
    let gcs = SPEC.replace(
        "[runners.selector]",
        "[runners.cache]\nType = \"gcs\"\n[runners.selector]",
    );
    let w = parse_with(&gcs, "gcs.toml", ParseMode::Spec)
        .unwrap()
        .warnings;
    assert!(
        w[0].to_string()
            .contains("gcs and azure caches are not implemented"),
        "{w:?}"
    );
}
