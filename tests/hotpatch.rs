//! The `hotpatch` example as a black box: short runs must end with `OK`, every call valid and no
//! code mapped; `--csv` and `--plot` write the per-second series (the SVG parses and holds the
//! calls/s, swaps/s and latency series); bad flags must exit with 2 and a usage message, without
//! a panic.
//!
//! The binary is built on demand (`tramway_harness::example_bin`).

use std::path::PathBuf;
use std::process::{Command, Output};

fn example() -> PathBuf {
    tramway_harness::example_bin::example_binary("hotpatch")
}

fn run(args: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .output()
        .expect("spawn the hotpatch example")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number in the summary row `label` (e.g. `  invalid results    0   ...`).
fn summary_value(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` row in the summary:\n{stdout}"));
    let value = line.split_whitespace().next().unwrap_or("");
    value
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("`{label}` row has no number: {line:?}"))
}

/// Runs a short demo and checks its verdict and summary.
fn assert_ok_run(args: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "hotpatch {args:?} exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("OK: ")),
        "no OK verdict:\n{stdout}"
    );
    assert_eq!(summary_value(&stdout, "invalid results"), 0, "{stdout}");
    assert_eq!(summary_value(&stdout, "mapped after drop"), 0, "{stdout}");
    assert!(summary_value(&stdout, "calls") > 0, "{stdout}");
    assert!(summary_value(&stdout, "swaps") > 0, "{stdout}");
    let emitted = summary_value(&stdout, "trampolines emitted");
    assert!(emitted > 0, "{stdout}");
    stdout
}

fn assert_usage_error(args: &[&str], mentions: &str) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "hotpatch {args:?}: stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("usage: hotpatch"),
        "no usage message:\n{stderr}"
    );
    assert!(
        stderr.contains(mentions),
        "stderr does not mention `{mentions}`:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

#[test]
fn short_run_with_tasks_flavor_is_ok_and_unmaps_everything() {
    let stdout = assert_ok_run(&[
        "--seconds",
        "1",
        "--tasks",
        "50",
        "--workers",
        "2",
        "--swap-interval",
        "1",
    ]);
    // The legend, then one status line per second under the column header.
    assert!(
        stdout.contains("--explain describes every column"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.contains("calls/s")), "{stdout}");
    assert!(stdout.contains("synchronize() p50"), "{stdout}");
    // The reclaim callbacks ran: some trampolines were reclaimed during the run.
    assert!(summary_value(&stdout, "grace periods") > 0, "{stdout}");
}

#[test]
fn short_run_with_rude_flavor_and_direct_sites_is_ok() {
    assert_ok_run(&[
        "--seconds=0.5",
        "--tasks=20",
        "--workers=2",
        "--swap-interval=500us",
        "--flavor=rude",
        "--site-kind=direct",
        "--sites=2",
    ]);
}

#[test]
fn preemption_inside_implementations_is_counted_and_the_tasks_flavor_holds() {
    let stdout = assert_ok_run(&[
        "--seconds",
        "1",
        "--tasks",
        "50",
        "--workers",
        "2",
        "--preempt",
        "100us",
    ]);
    assert!(stdout.contains("preempted every 100.0 µs"), "{stdout}");
    assert!(summary_value(&stdout, "preemptions") > 0, "{stdout}");
}

#[test]
fn rude_flavor_under_preemption_fails_in_a_child_and_says_it_was_expected() {
    let out = run(&[
        "--seconds",
        "3",
        "--tasks",
        "50",
        "--workers",
        "2",
        "--swap-interval",
        "500us",
        "--flavor",
        "rude",
        "--preempt",
        "100us",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("EXPECTED:"),
        "status {:?}
{stdout}
{}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn jitdump_and_perf_map_are_written_for_perf() {
    let dir = std::env::temp_dir().join(format!("tramway-hotpatch-jitdump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = run(&[
        "--seconds",
        "0.5",
        "--tasks",
        "20",
        "--workers",
        "2",
        "--perf-map",
        "--jitdump",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dumps: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("jit-"))
        .collect();
    assert_eq!(dumps.len(), 1, "one jit-<pid>.dump");
    let bytes = std::fs::read(dumps[0].path()).unwrap();
    // The jitdump magic `JiTD` and at least one record after the 40-byte header.
    assert_eq!(
        u32::from_ne_bytes(bytes[..4].try_into().unwrap()),
        0x4A69_5444
    );
    assert!(bytes.len() > 40 + 56, "no records: {} bytes", bytes.len());
    let pid = dumps[0].file_name().to_string_lossy()[4..]
        .trim_end_matches(".dump")
        .to_string();
    let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let lines = std::fs::read_to_string(&map).unwrap();
    assert!(lines
        .lines()
        .any(|l| l.ends_with(" tramway:code#1") || l.contains(" tramway:code#")));
    let _ = std::fs::remove_file(map);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_flags_exit_with_usage_and_code_2() {
    assert_usage_error(&["--workers", "zero"], "--workers");
    assert_usage_error(&["--workers", "0"], "--workers");
    assert_usage_error(&["--bogus"], "--bogus");
    assert_usage_error(&["--seconds"], "needs a value");
    assert_usage_error(&["--flavor", "sloppy"], "--flavor");
    assert_usage_error(&["--swap-interval", "soon"], "--swap-interval");
}

#[test]
fn help_prints_usage_and_exits_0() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("usage: hotpatch"));
}

#[test]
fn explain_describes_every_column_and_exits_0() {
    let out = run(&["--explain"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for column in [
        "calls/s",
        "swaps/s",
        "hits/s",
        "probes",
        "live",
        "retired",
        "mapped",
        "calls",
        "reclaimed",
        "stalls",
        "invalid",
        "free p50",
        "free p99",
        "sync()",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(column)),
            "--explain does not describe `{column}`:\n{stdout}"
        );
    }
    assert!(stdout.contains("callback delay"), "{stdout}");
}

#[test]
fn an_output_file_that_cannot_be_created_exits_2_before_running() {
    let out = run(&["--csv", "/nonexistent-dir/series.csv"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("--csv") && stderr.contains("cannot create"),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty(), "it ran anyway");
}

/// A scratch directory for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tramway-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The points of a `<polyline>`.
fn points(node: roxmltree::Node) -> Vec<(f64, f64)> {
    node.attribute("points")
        .unwrap_or("")
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').expect("x,y");
            (x.parse().expect("x"), y.parse().expect("y"))
        })
        .collect()
}

#[test]
fn plot_is_an_svg_with_the_three_series_and_csv_has_a_row_per_second() {
    let dir = Scratch::new("hotpatch-plot");
    let (csv, svg) = (dir.0.join("series.csv"), dir.0.join("series.svg"));
    let stdout = assert_ok_run(&[
        "--seconds",
        "3",
        "--tasks",
        "50",
        "--workers",
        "2",
        "--swap-interval",
        "1",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);

    // The CSV: the header, then one row per status line.
    let csv = std::fs::read_to_string(&csv).expect("the CSV was written");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.len() >= 3, "{csv}");
    assert!(rows.iter().all(|r| r.len() == header.len()), "{csv}");
    let column = |name: &str| {
        let i = header.iter().position(|h| *h == name);
        let i = i.unwrap_or_else(|| panic!("no CSV column {name}: {header:?}"));
        rows.iter().map(move |r| r[i])
    };
    assert!(
        column("calls_per_s").all(|v| v.parse::<f64>().unwrap() > 0.0),
        "{csv}"
    );
    assert!(
        column("swaps_per_s").all(|v| v.parse::<f64>().unwrap() > 0.0),
        "{csv}"
    );
    let sampled = |name| column(name).filter(|v| !v.is_empty()).count();
    let (free_points, sync_points) = (sampled("retire_to_free_p50_us"), sampled("synchronize_us"));
    assert!(free_points >= 2 && sync_points >= 2, "{csv}");
    assert!(stdout.contains("wrote the chart"), "{stdout}");

    // The SVG parses, and each panel holds its series: one polyline per series (width 2; axes
    // and ticks are width 1) with a point for every second that had a value.
    let svg = std::fs::read_to_string(&svg).expect("the SVG was written");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let series_in = |id: &str| -> Vec<Vec<(f64, f64)>> {
        let panel = root
            .descendants()
            .find(|n| n.has_tag_name("svg") && n.attribute("id") == Some(id))
            .unwrap_or_else(|| panic!("no panel `{id}` in the SVG"));
        panel
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
            .map(points)
            .collect()
    };
    let texts: String = root
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join(" ");
    for caption in ["calls/s", "swaps/s", "grace-period latency"] {
        assert!(texts.contains(caption), "no `{caption}` caption: {texts}");
    }
    let calls = series_in("calls-per-second");
    assert_eq!(calls.len(), 1, "calls/s is one series");
    assert_eq!(calls[0].len(), rows.len());
    let swaps = series_in("swaps-per-second");
    assert_eq!(swaps.len(), 1, "swaps/s is one series");
    assert_eq!(swaps[0].len(), rows.len());
    let latency = series_in("gp-latency");
    let lengths: Vec<usize> = latency.iter().map(Vec::len).collect();
    assert_eq!(
        lengths,
        [free_points, free_points, sync_points],
        "p50, p99, synchronize()"
    );
    for label in ["retire -> free p50", "retire -> free p99", "synchronize()"] {
        assert!(texts.contains(label), "no legend entry `{label}`: {texts}");
    }
    // Time runs left to right in every series.
    for s in calls.iter().chain(&swaps).chain(&latency) {
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0), "{s:?}");
    }
}
