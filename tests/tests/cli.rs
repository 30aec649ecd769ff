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
    assert_eq!((first["replayed"].as_bool(), second["replayed"].as_bool()), (Some(false), Some(true)));
    // Reports wait for the read models to include the last command.
    let last = second["position"].to_string();
    let last = last.as_str();

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

    let funnel =
        json(url, &["report", "funnel", "--from", "2026-03-01", "--to", "2026-04-01", "--min-position", last]).await;
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
    let lines = [
        r#"{"lead": "crm-1", "type": "captured", "occurred_at": "2026-01-05T10:00:00Z", "email": "ada@example.com", "source": "web"}"#,
        r#"{"lead": "crm-1", "type": "qualified", "occurred_at": "2026-01-06T10:00:00Z", "score": 70, "assignee": "ben"}"#,
        r#"{"lead": "crm-1", "type": "assigned", "occurred_at": "2026-01-07", "assignee": "chloe"}"#,
        r#"{"lead": "crm-1", "type": "assigned", "occurred_at": "2026-01-07", "assignee": "dev"}"#,
        r#"{"lead": "crm-1", "type": "accepted", "occurred_at": "2026-01-07T12:00:00Z", "owner": "dev"}"#,
        r#"{"lead": "crm-1", "type": "closed", "occurred_at": "2026-02-01", "outcome": "won", "amount": "5000.00", "currency": "EUR"}"#,
        r#"{"lead": "crm-1", "type": "feedback", "occurred_at": "2026-02-02", "rating": 5, "reason_codes": ["good-fit"]}"#,
        r#"{"lead": "crm-2", "type": "captured", "occurred_at": "2026-01-07", "email": "not-an-email"}"#,
        r#"{"lead": "crm-3", "type": "archived", "occurred_at": "2026-01-07"}"#,
        r#"{"lead": "crm-4", "type": "captured", "occurred_at": "2026-01-07", "email": "cy@example.com", "colour": "red"}"#,
        "",
        "not json",
    ];
    let history = dir.path().join("history.jsonl");
    std::fs::write(&history, lines.join("\n")).expect("write the history");
    let first = leadger(&["import", history.to_str().expect("utf-8"), "--server", &url]).await;
    let said = text(&first);
    assert!(!first.status.success(), "rejected lines make the exit code 1: {said}");
    assert!(said.contains("applied 7 lines, 0 already imported, rejected 4"), "{said}");
    let line =
        |n: usize| said.lines().find(|l| l.starts_with(&format!("  line {n}: "))).unwrap_or_default().to_string();
    assert!(line(8).contains("InvalidArgument") && line(8).contains("email"), "{said}");
    assert!(line(9).contains("type:"), "{said}");
    assert!(line(10).contains("colour:"), "{said}");
    assert!(line(12).contains("not a JSON object"), "{said}");

    // The same history again, one time spelled differently: nothing new.
    let respelled = history.with_file_name("respelled.jsonl");
    std::fs::write(&respelled, lines.join("\n").replace("2026-01-05T10:00:00Z", "2026-01-05T11:00:00+01:00"))
        .expect("write the history");
    let second = leadger(&["import", respelled.to_str().expect("utf-8"), "--server", &url]).await;
    assert!(text(&second).contains("applied 0 lines, 7 already imported, rejected 4"), "{}", text(&second));

    // A CSV export of another lead: header row, a short row, a long row.
    let csv = dir.path().join("history.csv");
    std::fs::write(
        &csv,
        "lead,type,occurred_at,email,source,outcome,lost_reason\n\
         crm-5,captured,2026-01-08,eve@example.com,event,,\n\
         crm-5,closed,2026-01-09,,,lost\n\
         crm-5,closed,2026-01-10,,,lost,competitor,extra\n\
         crm-5,closed,2026-01-11,,,lost,competitor\n",
    )
    .expect("write the csv");
    let third = leadger(&["import", csv.to_str().expect("utf-8"), "--server", &url]).await;
    let said = text(&third);
    assert!(said.contains("applied 2 lines, 0 already imported, rejected 2"), "{said}");
    let line =
        |n: usize| said.lines().find(|l| l.starts_with(&format!("  line {n}: "))).unwrap_or_default().to_string();
    assert!(line(3).contains("6 fields where the header row has 7"), "{said}");
    assert!(line(4).contains("8 fields"), "{said}");

    // The read models saw each event once: one lead won, one lost.
    let mut funnel = Value::Null;
    for _ in 0..100 {
        funnel = json(&url, &["report", "funnel"]).await;
        if funnel["groups"][0]["stages"][5]["reached"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stages = &funnel["groups"][0]["stages"];
    assert_eq!((&stages[0]["stage"], &stages[0]["reached"]), (&"CAPTURED".into(), &2.into()), "{funnel}");
    assert_eq!((&stages[3]["stage"], &stages[3]["reached"]), (&"WON".into(), &1.into()), "{funnel}");
    assert_eq!((&stages[5]["stage"], &stages[5]["reached"]), (&"LOST".into(), &1.into()), "{funnel}");
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
    // One row per flag: `  --flag  value  (source)`.
    let row = |flag: &str| {
        let row = shown.lines().find(|line| line.split_whitespace().next() == Some(flag));
        row.map(|line| line.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")).unwrap_or_default()
    };
    assert_eq!(row("--database-url"), "postgres://app:***@db/leads (file)", "{shown}");
    assert_eq!(row("--max-batch"), "32 (env)", "the environment beats the file: {shown}");
    assert_eq!(row("--no-projector"), "true (file)", "{shown}");
    assert_eq!(row("--queue-capacity"), "8192 (default)", "{shown}");
    assert_eq!(row("--nats-token"), "*** (file)", "{shown}");

    // A worker's required --database-url may come from the file alone.
    std::fs::write(
        dir.path().join("leadger.toml"),
        "database_url = \"postgres://db/leads\"\nnats_url = \"nats://n1:4222\"\n",
    )
    .expect("write config");
    let relay = leadger(&["config", "check", "relay", "--config", config]).await;
    assert!(relay.status.success(), "{}", text(&relay));
    assert!(text(&relay).contains("nats://n1:4222  (file)"), "{}", text(&relay));

    for (file, refusal) in [
        ("databse_url = \"sqlite://x.db\"\n", "unknown setting `databse_url`"),
        // Per-call arguments are not settings: a shared request id would replay every command.
        ("request_id = \"x\"\n", "unknown setting `request_id`"),
        ("no_projector = \"yes\"\n", "`no_projector` is a switch"),
    ] {
        std::fs::write(dir.path().join("leadger.toml"), file).expect("write config");
        let refused = leadger(&["config", "check", "--config", config]).await;
        assert!(!refused.status.success(), "{file}");
        assert!(text(&refused).contains(refusal), "{file}: {}", text(&refused));
    }
}

/// The HTML report of a demo quarter in headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_shows_the_json_figures_offline_in_chromium() {
    let chromium = PathBuf::from(std::env::var("LEADGER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(chromium.exists(), "{} is missing: tests/install-tools.sh installs Debian's chromium", chromium.display());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut demo = tokio::process::Command::new(leadger_binary!())
        .args(["demo", "--leads", "300", "--keep", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    // `--keep` says where it serves once the quarter is in and the reports are printed.
    let stderr = demo.stderr.take().expect("demo stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut said = Vec::new();
    let listen = loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        match line.expect("the demo answers within 120 s").expect("read demo stderr") {
            Some(line) if line.starts_with("serving on ") => {
                break line["serving on ".len()..].split_whitespace().next().expect("an address").to_string();
            }
            Some(line) => said.push(line),
            None => panic!("the demo ended early: {said:?}"),
        }
    };
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
