//! The command line for people, run as the real binary against a real
//! server: `leadger lead …` through a lead's whole life, `leadger report …`
//! as tables and JSON, `leadger config check`, `leadger demo`, and the HTML
//! report in headless Chromium (its figures equal the JSON, it makes no
//! network request, and a screenshot lands in target/test-artifacts).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use leadger_tests::{ServerProcess, free_port, leadger_binary, wait_until_serving};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

async fn leadger(args: &[&str]) -> Output {
    tokio::process::Command::new(leadger_binary!())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run leadger")
}

/// Runs `leadger ARGS --server SERVER --json` and parses its stdout.
async fn json(server: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--server", server, "--json"]);
    let output = leadger(&all).await;
    assert!(output.status.success(), "leadger {all:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("leadger {all:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_lives_through_the_cli_and_shows_in_the_reports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&leadger_binary!(), dir.path(), &["--database-url", "sqlite://cli.db"])
        .await
        .expect("start the server");
    let url = format!("http://{}", server.addr);
    let url = url.as_str();

    let captured = json(
        url,
        &[
            "lead",
            "capture",
            "--email",
            "ada@example.com",
            "--name",
            "Ada",
            "--source",
            "web",
            "--campaign",
            "spring",
            "--occurred-at",
            "2026-03-02T09:00:00Z",
        ],
    )
    .await;
    let lead = captured["lead_id"].as_str().expect("a lead id").to_string();
    assert_eq!(captured["stage"], "CAPTURED");
    let steps: [&[&str]; 4] = [
        &["lead", "qualify", &lead, "--score", "80", "--assignee", "ben", "--occurred-at", "2026-03-02T10:00:00Z"],
        &["lead", "accept", &lead, "--owner", "ben", "--occurred-at", "2026-03-02T11:00:00Z"],
        &[
            "lead",
            "close",
            &lead,
            "--outcome",
            "won",
            "--amount",
            "12000.50",
            "--currency",
            "EUR",
            "--occurred-at",
            "2026-03-20",
        ],
        &["lead", "feedback", &lead, "--rating", "5", "--reason-code", "good-fit", "--occurred-at", "2026-03-21"],
    ];
    let mut versions = vec![captured["version"].as_u64().expect("a version")];
    for step in steps {
        versions.push(json(url, step).await["version"].as_u64().expect("a version"));
    }
    assert_eq!(versions, [1, 2, 3, 4, 5], "each command appends one event");

    let shown = json(url, &["lead", "show", &lead]).await;
    assert_eq!(shown["stage"], "WON");
    assert_eq!(shown["email"], "ada@example.com");
    let types: Vec<&str> =
        shown["events"].as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.len(), 5, "{types:?}");

    // The same request id twice: applied once.
    let again = ["lead", "capture", "--email", "bob@example.com", "--request-id", "import-42"];
    let (first, second) = (json(url, &again).await, json(url, &again).await);
    assert_eq!(first["lead_id"], second["lead_id"]);
    assert_eq!(second["version"], 1);

    // Refusals name the field and exit non-zero.
    let refused = leadger(&["lead", "qualify", "not-a-uuid", "--server", url]).await;
    assert!(!refused.status.success());
    assert!(text(&refused).contains("lead_id"), "{}", text(&refused));
    let bad_amount = leadger(&[
        "lead",
        "close",
        &lead,
        "--outcome",
        "won",
        "--amount",
        "12,5",
        "--currency",
        "EUR",
        "--server",
        url,
    ])
    .await;
    assert!(!bad_amount.status.success());
    assert!(text(&bad_amount).contains("--amount"), "{}", text(&bad_amount));

    let funnel = json(url, &["report", "funnel", "--from", "2026-03-01", "--to", "2026-04-01"]).await;
    let stages = &funnel["groups"][0]["stages"];
    let reached = |stage: &str| {
        stages.as_array().expect("stages").iter().find(|s| s["stage"] == stage).map(|s| s["reached"].clone())
    };
    assert_eq!(reached("CAPTURED"), Some(1.into()), "{funnel}");
    assert_eq!(reached("WON"), Some(1.into()));
    assert_eq!(reached("LOST"), Some(0.into()));

    let conversion =
        json(url, &["report", "conversion", "--group-by", "source", "--from", "2026-03-01", "--to", "2026-04-01"])
            .await;
    let web = &conversion["groups"][0];
    assert_eq!((web["key"].as_str(), web["won"].as_u64()), (Some("web"), Some(1)));
    assert_eq!(web["won_amount"][0]["amount_minor"], 1_200_050);

    let quality = json(url, &["report", "quality", "--from", "2026-03-01", "--to", "2026-04-01"]).await;
    assert_eq!(quality["groups"][0]["mean_rating"], 5.0);

    // The human table draws the funnel and names the conversion.
    let table = leadger(&["report", "funnel", "--server", url]).await;
    let table = text(&table);
    assert!(table.contains("CAPTURED") && table.contains('█') && table.contains("% from MQL"), "{table}");
    server.terminate().await.expect("stop the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_applies_each_line_once_and_lists_the_rejected_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&leadger_binary!(), dir.path(), &["--database-url", "sqlite://import.db"])
        .await
        .expect("start the server");
    let url = format!("http://{}", server.addr);
    let history = dir.path().join("history.jsonl");
    let lines = [
        r#"{"lead": "crm-1", "type": "captured", "occurred_at": "2026-01-05T10:00:00Z", "email": "ada@example.com", "source": "web"}"#,
        r#"{"lead": "crm-1", "type": "qualified", "occurred_at": "2026-01-06T10:00:00Z", "score": 70, "assignee": "ben"}"#,
        r#"{"lead": "crm-1", "type": "accepted", "occurred_at": "2026-01-06T12:00:00Z", "owner": "ben"}"#,
        r#"{"lead": "crm-1", "type": "closed", "occurred_at": "2026-02-01", "outcome": "won", "amount": "5000.00", "currency": "EUR"}"#,
        r#"{"lead": "crm-1", "type": "feedback", "occurred_at": "2026-02-02", "rating": 5, "reason_codes": ["good-fit"]}"#,
        r#"{"lead": "crm-2", "type": "captured", "occurred_at": "2026-01-07", "email": "not-an-email"}"#,
        r#"{"lead": "crm-3", "type": "archived", "occurred_at": "2026-01-07"}"#,
        r#"{"lead": "crm-4", "type": "captured", "occurred_at": "2026-01-07", "email": "cy@example.com", "colour": "red"}"#,
        "not json",
    ];
    std::fs::write(&history, lines.join("\n")).expect("write the history");
    let history = history.to_str().expect("utf-8 path");
    let first = leadger(&["import", history, "--server", &url]).await;
    let said = text(&first);
    assert!(!first.status.success(), "rejected lines make the exit code 1: {said}");
    assert!(said.contains("imported 5 lines") && said.contains("rejected 4"), "{said}");
    assert!(said.contains("line 6: InvalidArgument") && said.contains("email"), "{said}");
    assert!(said.contains("line 7: type:"), "{said}");
    assert!(said.contains("line 8: colour:"), "{said}");
    assert!(said.contains("line 9: not a JSON object"), "{said}");

    let funnel = json(&url, &["report", "funnel"]).await;
    let position = funnel["as_of_position"].clone();
    let second = leadger(&["import", history, "--server", &url]).await;
    assert!(text(&second).contains("imported 5 lines"), "{}", text(&second));
    let again = json(&url, &["report", "funnel"]).await;
    assert_eq!(again["as_of_position"], position, "a re-run appends nothing");
    assert_eq!(again["groups"][0]["stages"][3]["stage"], "WON");
    assert_eq!(again["groups"][0]["stages"][3]["reached"], 1);
    server.terminate().await.expect("stop the server");
}

#[tokio::test]
async fn config_check_prints_effective_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("leadger.toml");
    std::fs::write(&config, "database_url = \"postgres://app:s3cret@db/leads\"\nkek_file = \"/nonexistent/kek\"\n")
        .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    // The KEK file does not exist: invalid, and the message says which file.
    let missing = leadger(&["config", "check", "--config", config]).await;
    assert!(!missing.status.success());
    assert!(text(&missing).contains("/nonexistent/kek"), "{}", text(&missing));

    let kek = dir.path().join("kek");
    let generated = leadger(&["kek", "generate", kek.to_str().expect("utf-8")]).await;
    assert!(generated.status.success(), "{}", text(&generated));
    std::fs::write(
        dir.path().join("leadger.toml"),
        format!(
            "database_url = \"postgres://app:s3cret@db/leads\"\nkek_file = \"{}\"\nnats_token = \"t0ken\"\nmax_batch = 64\nno_projector = true\n",
            kek.display()
        ),
    )
    .expect("write config");
    let checked = tokio::process::Command::new(leadger_binary!())
        .args(["config", "check", "--config", config])
        .env("LEADGER_MAX_BATCH", "32")
        .output()
        .await
        .expect("run leadger");
    let shown = text(&checked);
    assert!(checked.status.success(), "{shown}");
    assert!(!shown.contains("s3cret") && !shown.contains("t0ken"), "a secret leaked: {shown}");
    assert!(shown.contains("postgres://app:***@db/leads  (file)"), "{shown}");
    assert!(shown.contains("--max-batch") && shown.contains("32  (env)"), "the environment beats the file: {shown}");
    assert!(shown.contains("--no-projector") && shown.contains("true  (file)"), "{shown}");
    assert!(shown.contains("--queue-capacity") && shown.contains("8192  (default)"), "{shown}");

    std::fs::write(dir.path().join("leadger.toml"), "databse_url = \"sqlite://x.db\"\n").expect("write config");
    let typo = leadger(&["config", "check", "--config", config]).await;
    assert!(!typo.status.success());
    assert!(text(&typo).contains("unknown setting `databse_url`"), "{}", text(&typo));
}

/// The HTML report of a demo quarter in headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_shows_the_json_figures_offline_in_chromium() {
    let chromium = PathBuf::from(std::env::var("LEADGER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(chromium.exists(), "{} is missing: tests/install-tools.sh installs Debian's chromium", chromium.display());
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut demo = tokio::process::Command::new(leadger_binary!())
        .args(["demo", "--leads", "300", "--keep", "--listen", &listen])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    // `--keep` says so once the quarter is in and the reports are printed.
    let stderr = demo.stderr.take().expect("demo stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut said = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        match line.expect("the demo answers within 120 s").expect("read demo stderr") {
            Some(line) if line.contains("serving on") => break,
            Some(line) => said.push(line),
            None => panic!("the demo ended early: {said:?}"),
        }
    }
    wait_until_serving(listen.parse().expect("address")).await.expect("the demo serves");
    let url = format!("http://{listen}");
    let funnel = json(&url, &["report", "funnel"]).await;
    assert_eq!(funnel["groups"][0]["stages"][0]["reached"], 300, "{funnel}");
    let conversion = json(&url, &["report", "conversion", "--group-by", "source"]).await;
    let breaches = json(&url, &["sla", "breaches"]).await;
    let html = dir.path().join("report.html");
    let wrote = leadger(&["report", "funnel", "--server", &url, "--html", html.to_str().expect("utf-8")]).await;
    assert!(wrote.status.success(), "{}", text(&wrote));
    let _ = demo.kill().await;

    let (dom, requests) = render(&chromium, dir.path(), &html).await;
    // Chromium's own record of the requests the page made (the browser's
    // own calls home, refused by this closed network, are not the page's).
    assert!(requests.is_empty(), "the report made network requests: {requests:?}");

    for stage in funnel["groups"][0]["stages"].as_array().expect("stages") {
        let name = stage["stage"].as_str().expect("stage name");
        let drawn = attribute(&dom, &format!("data-stage=\"{name}\""), "data-count");
        assert_eq!(drawn.as_deref(), Some(stage["reached"].to_string().as_str()), "funnel bar {name}");
    }
    for group in conversion["groups"].as_array().expect("groups") {
        let source = group["key"].as_str().expect("key");
        let drawn = attribute(&dom, &format!("data-source=\"{source}\""), "data-won");
        assert_eq!(drawn.as_deref(), Some(group["won"].to_string().as_str()), "conversion bar {source}");
    }
    let rows = dom.matches("class=\"breach\"").count();
    assert_eq!(rows, breaches.as_array().expect("breaches").len(), "breach rows");
    assert!(rows > 0, "the demo quarter has SLA breaches");

    // The check above can fail: a page that fetches is caught.
    let leaky = dir.path().join("leaky.html");
    std::fs::write(&leaky, format!("<img src=\"http://127.0.0.1:{}/pixel.png\">", free_port())).expect("write page");
    let (_, leaked) = render(&chromium, dir.path(), &leaky).await;
    assert!(leaked.iter().any(|url| url.starts_with("http://127.0.0.1")), "the net log missed a request: {leaked:?}");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let screenshot = artifacts.join("report.png");
    let shot = chromium_command(&chromium, dir.path(), "shot")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--window-size=1280,2400")
        .arg(format!("file://{}", html.display()))
        .output()
        .await
        .expect("run chromium");
    assert!(shot.status.success() && screenshot.exists(), "no screenshot: {}", text(&shot));
}

fn chromium_command(chromium: &Path, dir: &Path, profile: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]);
    command.arg(format!("--user-data-dir={}", dir.join(format!("chromium-{profile}")).display()));
    command
}

/// The page's DOM after loading, and the URLs Chromium's net log saw the page request.
async fn render(chromium: &Path, dir: &Path, page: &Path) -> (String, Vec<String>) {
    let name = page.file_stem().and_then(|s| s.to_str()).unwrap_or("page");
    let net_log = dir.join(format!("{name}-netlog.json"));
    let output = chromium_command(chromium, dir, name)
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .await
        .expect("run chromium");
    assert!(output.status.success(), "chromium failed: {}", text(&output));
    let log = std::fs::read_to_string(&net_log).expect("chromium wrote its net log");
    // An unfinished log (killed before its footer) is still a list of events.
    let log: Value = serde_json::from_str(&log)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", log.trim_end().trim_end_matches(','))))
        .expect("the net log is JSON");
    // A request on behalf of a page opened from a file has that page's site,
    // file://, in its network isolation key; the browser's own have none.
    let mut urls = Vec::new();
    for event in log["events"].as_array().into_iter().flatten() {
        let params = &event["params"];
        let for_page = params["network_isolation_key"].as_str().is_some_and(|key| key.starts_with("file://"));
        if let (true, Some(url)) = (for_page, params["url"].as_str()) {
            urls.push(url.to_string());
        }
    }
    (String::from_utf8_lossy(&output.stdout).into_owned(), urls)
}

/// The value of `attribute` in the element whose tag holds `marker`.
fn attribute(dom: &str, marker: &str, attribute: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let value = tag.split(&format!("{attribute}=\"")).nth(1)?;
    Some(value.split('"').next()?.to_string())
}
