//! Secrets are references: a sync whose credentials are known dummy values never shows them in a
//! log line, an error, status output, or a stored row.

use signals_tests::{create_items, items_source, mutate_items, run_cli, write_config, Harness, Moto};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const TOKEN: &str = "s3cr3t-DUMMY-7731";
const WRONG: &str = "wr0ng-DUMMY-4410";

fn assert_absent(what: &str, haystack: &[u8]) {
    for secret in [TOKEN, WRONG] {
        assert!(
            !haystack.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret `{secret}` found in {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dummy_secrets_appear_in_no_log_error_status_or_stored_row() {
    let h = Harness::with_receiver_auth(Some(format!("Bearer {TOKEN}"))).await;
    create_items(&h.src(), 700);
    let auth = "auth = { bearer = { token = \"env:SIGNALS_TEST_TOKEN\" } }";
    let config = write_config(&h, &h.config_with(&h.url, auth, &items_source(1_000)));
    let mut transcript = String::new();
    let ok = [("SIGNALS_TEST_TOKEN", TOKEN), ("RUST_LOG", "debug")];
    for args in [
        vec!["config", "apply", &config],
        vec!["onboard", "--tenant", "t"],
        vec!["run", "--until-idle"],
    ] {
        let (status, out) = run_cli(BIN, &h, &args, &ok);
        assert!(status.success(), "{args:?}: {out}");
        transcript.push_str(&out);
    }
    h.assert_in_sync().await;

    // A wrong credential: the 401 is dead-lettered with its error, still without the value.
    mutate_items(&h.src(), 700);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let bad = [("SIGNALS_TEST_TOKEN", WRONG), ("RUST_LOG", "debug")];
    let (status, out) = run_cli(BIN, &h, &["run", "--until-idle", "--tick"], &bad);
    assert!(status.success(), "{out}");
    transcript.push_str(&out);
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["dlq", "list"],
        vec!["dlq", "show", "1"],
    ] {
        let (status, out) = run_cli(BIN, &h, &args, &bad);
        assert!(status.success(), "{args:?}: {out}");
        transcript.push_str(&out);
    }
    assert!(transcript.contains("401"), "the 401 is reported:\n{transcript}");
    assert!(
        transcript.contains("blocked"),
        "the source shows as blocked:\n{transcript}"
    );
    assert_absent("CLI output and logs", transcript.as_bytes());
    for entry in std::fs::read_dir(h.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        assert_absent(&path.display().to_string(), &std::fs::read(&path).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_aws_secrets_manager() {
    let moto = Moto::start();
    let arn = moto.create_secret("signals/push", r#"{"token": "sm-DUMMY-9931"}"#);
    let h = Harness::with_receiver_auth(Some("Bearer sm-DUMMY-9931".into())).await;
    create_items(&h.src(), 600);
    let auth = format!("auth = {{ bearer = {{ token = \"aws-sm:{arn}#token\" }} }}");
    let config = write_config(&h, &h.config_with(&h.url, &auth, &items_source(1_000)));
    let env = [
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "eu-west-1"),
    ];
    let mut transcript = String::new();
    for args in [
        vec!["config", "apply", &config],
        vec!["onboard", "--tenant", "t"],
        vec!["run", "--until-idle"],
    ] {
        let (status, out) = run_cli(BIN, &h, &args, &env);
        assert!(status.success(), "{args:?}: {out}");
        transcript.push_str(&out);
    }
    h.assert_in_sync().await;
    assert!(
        !transcript.contains("sm-DUMMY-9931"),
        "the secret's value leaked:\n{transcript}"
    );

    // A reference to a secret that does not exist is a clear error naming the reference only.
    let missing = format!("aws-sm:{}#token", arn.replace("signals/push", "signals/nope"));
    let config = write_config(
        &h,
        &h.config_with(
            &h.url,
            &format!("auth = {{ bearer = {{ token = \"{missing}\" }} }}"),
            &items_source(1_000),
        ),
    );
    assert!(run_cli(BIN, &h, &["config", "apply", &config], &env).0.success());
    signals_tests::mutate_items(&h.src(), 600);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        run_cli(BIN, &h, &["run", "--until-idle", "--tick", "--max-attempts", "1"], &env)
            .0
            .success()
    );
    let (_, shown) = run_cli(BIN, &h, &["dlq", "show", "1"], &env);
    assert!(
        shown.contains("Secrets Manager") && shown.contains("ResourceNotFoundException"),
        "{shown}"
    );
}

#[test]
fn secrets_manager_values_are_cached_and_fetched_again_after_an_authentication_failure() {
    use signals_shared::domain::secret_ref::SecretRef;
    use signals_shared::secrets::{invalidate_cached, resolve};
    let moto = Moto::start();
    let arn = moto.create_secret("signals/rotating", "first-DUMMY");
    // Only this test reads these variables in this process; the CLI tests pass their own.
    for (k, v) in [
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ] {
        std::env::set_var(k, v);
    }
    let r = SecretRef::AwsSm(arn.clone());
    assert_eq!(resolve(&r).unwrap().expose(), "first-DUMMY");
    moto.put_secret(&arn, "second-DUMMY");
    assert_eq!(resolve(&r).unwrap().expose(), "first-DUMMY", "cached within its TTL");
    invalidate_cached(); // what an authentication failure does
    assert_eq!(resolve(&r).unwrap().expose(), "second-DUMMY", "rotated value fetched");
}
