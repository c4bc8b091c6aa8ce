//! Every example's command line, as a new user meets it: `--help` exits 0 and lists every flag
//! the example accepts, and a bad value exits 2 with a message that names the flag and says
//! why, before the example does anything (no output on stdout, no panic).
//!
//! The flags each `--help` must list are written out below, and every flag-like string literal
//! in the example's sources (`"--name"`) must appear in its `--help` too, so a flag added to a
//! parser but not to its usage text fails here. The binaries are built on demand
//! (`tramway_harness::example_bin`).

use std::process::{Command, Output};

/// One example: its name, its sources, the flags its `--help` must list, and bad command lines
/// with a fragment the error message must contain.
struct Example {
    name: &'static str,
    sources: &'static [&'static str],
    flags: &'static [&'static str],
    bad: &'static [(&'static [&'static str], &'static str)],
}

const EXAMPLES: &[Example] = &[
    Example {
        name: "hotpatch",
        sources: &[
            include_str!("../examples/hotpatch/main.rs"),
            include_str!("../examples/hotpatch/cli.rs"),
        ],
        flags: &[
            "--seconds",
            "--workers",
            "--tasks",
            "--sites",
            "--swap-interval",
            "--flavor",
            "--site-kind",
            "--callback-delay",
            "--csv",
            "--plot",
            "--explain",
            "--help",
        ],
        bad: &[
            (&["--sites", "0"], "--sites: 0 is not in 1..=16"),
            (&["--seconds", "forever"], "is not a number"),
            (&["--callback-delay", "2s"], "is not between 0 and 1s"),
        ],
    },
    Example {
        name: "tiered",
        sources: &[include_str!("../examples/tiered/main.rs")],
        flags: &[
            "--script",
            "--seconds",
            "--workers",
            "--tasks",
            "--threshold",
            "--help",
        ],
        bad: &[
            (&["--workers", "0"], "--workers: 0 is not in"),
            (&["--tasks", "1.5"], "is not an integer"),
        ],
    },
    Example {
        name: "probe-teardown",
        sources: &[include_str!("../examples/probe-teardown/main.rs")],
        flags: &["--sites", "--readers", "--sequential-max", "--help"],
        bad: &[
            (&["--sites", "0"], "--sites: 0 is not in 1..=100000"),
            (&["--readers", "many"], "is not a whole number"),
            (&["--sequential-max"], "needs a value"),
        ],
    },
    Example {
        name: "bench-report",
        sources: &[include_str!("../examples/bench-report/main.rs")],
        flags: &[
            "--quick",
            "--csv",
            "--rounds",
            "--warmup-ms",
            "--measure-ms",
            "--burst",
            "--workers",
            "--tasks",
            "--rates",
            "--strategies",
            "--help",
        ],
        bad: &[
            (
                &["--rounds", "0"],
                "--rounds: `0` is not a number in 1..=100",
            ),
            (
                &["--strategies", "fast"],
                "is not a comma-separated subset of",
            ),
        ],
    },
    Example {
        name: "quickstart",
        sources: &[include_str!("../examples/quickstart.rs")],
        flags: &["--help"],
        bad: &[(&["--seconds", "3"], "unknown argument `--seconds`")],
    },
];

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(tramway_harness::example_bin::example_binary(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// String literals in `src` that are exactly a long flag: `"--name"` (unit tests, from the
/// first `#[cfg(test)]` on, are skipped: they try bad flags on purpose).
fn flag_literals(src: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut rest = src.split("#[cfg(test)]").next().unwrap_or(src);
    while let Some(i) = rest.find("\"--") {
        rest = &rest[i + 1..];
        let name_len = rest[2..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .map_or(rest.len() - 2, |n| n);
        if name_len > 0 && rest[2 + name_len..].starts_with('"') {
            flags.push(rest[..2 + name_len].to_string());
        }
    }
    flags
}

#[test]
fn every_help_exits_0_and_lists_every_flag() {
    for ex in EXAMPLES {
        let out = run(ex.name, &["--help"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "{} --help exited with {:?}\n{stderr}",
            ex.name,
            out.status
        );
        assert!(
            stdout.contains(&format!("usage: {}", ex.name)),
            "{} --help prints no usage line:\n{stdout}",
            ex.name
        );
        for flag in ex.flags {
            assert!(
                stdout.contains(flag),
                "{} --help does not list {flag}:\n{stdout}",
                ex.name
            );
        }
        for src in ex.sources {
            for flag in flag_literals(src) {
                assert!(
                    stdout.contains(&flag),
                    "{} accepts {flag} (a literal in its source) but --help does not list it",
                    ex.name
                );
            }
        }
    }
}

#[test]
fn a_bad_value_exits_2_with_the_reason_before_doing_anything() {
    for ex in EXAMPLES {
        for (args, reason) in ex.bad {
            let out = run(ex.name, args);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(2),
                "{} {args:?}: stdout:\n{stdout}\nstderr:\n{stderr}",
                ex.name
            );
            assert!(
                stderr.contains(reason),
                "{} {args:?}: stderr does not say `{reason}`:\n{stderr}",
                ex.name
            );
            assert!(
                !stderr.contains("panicked"),
                "{} {args:?}:\n{stderr}",
                ex.name
            );
            assert!(
                stdout.is_empty(),
                "{} {args:?} started anyway:\n{stdout}",
                ex.name
            );
        }
    }
}

#[test]
fn flag_literals_are_found_in_source() {
    let src = r#"match flag { "--sites" => 1, "--x-y2" => 2 } "--help describes" "-h" "--""#;
    assert_eq!(flag_literals(src), ["--sites", "--x-y2"]);
}
