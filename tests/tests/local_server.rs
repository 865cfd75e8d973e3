//! The README's run command, black-box: the `local-server` binary starts on the embedded
//! default and answers /healthz; bad configuration is one clear line and exit code 1.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn binary() -> std::path::PathBuf {
    // target/debug/deps/<test> → target/debug/local-server (infra/test.sh builds the binaries)
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("local-server");
    assert!(
        path.exists(),
        "{} is missing: run the tests through infra/test.sh (it builds the binaries)",
        path.display()
    );
    path
}

fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTGOING_MAIL_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn bad_configuration_is_one_line_naming_the_variable() {
    for (var, value) in [
        ("OUTGOING_MAIL_STORE", "postgres"),
        ("OUTGOING_MAIL_LISTEN", "not-an-address"),
        ("OUTGOING_MAIL_PUBLIC_URL", "http://public.example.com"),
        ("OUTGOING_MAIL_EXTRA_CA", "/nonexistent/ca.pem"),
        ("OUTGOING_MAIL_DEFAULT_SENDER", "{not json"),
        ("OUTGOING_MAIL_VERIFY_INTERVAL_HOURS", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = clean_env(&mut Command::new(binary()))
            .env("OUTGOING_MAIL_DATA_DIR", dir.path())
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}: exactly one line: {stderr}");
        assert!(
            lines[0].contains(var),
            "{var}: the line names the variable: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{var}: no panic: {stderr}");
    }
    // AWS store without a table
    let out = clean_env(&mut Command::new(binary()))
        .env("OUTGOING_MAIL_STORE", "aws")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTGOING_MAIL_TABLE"));
}

#[test]
fn starts_on_the_embedded_default_and_answers_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = clean_env(&mut Command::new(binary()))
        .env("OUTGOING_MAIL_DATA_DIR", dir.path())
        .env("OUTGOING_MAIL_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let rest: Vec<String> = lines.take(2).map(|l| l.unwrap()).collect();
    assert!(
        rest.iter().any(|l| l.contains("admin token")),
        "prints the generated admin token: {rest:?}"
    );
    let health = reqwest::blocking_get(&format!("http://{addr}/healthz"));
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(health, 200);
    assert!(
        dir.path().join("secret.key").exists() && dir.path().join("outgoing-mail.sqlite3").exists()
    );
}

mod reqwest {
    /// A tiny blocking GET on a fresh runtime (the test itself is synchronous).
    pub fn blocking_get(url: &str) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            ::reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    }
}
