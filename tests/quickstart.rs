//! The README's "API in ten lines" is `examples/quickstart.rs` (the lines between its
//! `README: begin` / `README: end` markers, verbatim), contains no `unsafe`, and the program
//! runs to a clean exit every time: dropping its handles in whatever order the locals go never
//! runs freed code (an earlier README snippet segfaulted at exit in 18 of 40 runs).

use std::process::Command;

/// The snippet between the markers of the quickstart example, de-indented.
fn example_snippet() -> Vec<String> {
    let src = include_str!("../examples/quickstart.rs");
    let lines: Vec<&str> = src
        .lines()
        .skip_while(|l| !l.contains("// README: begin"))
        .skip(1)
        .take_while(|l| !l.contains("// README: end"))
        .collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").to_string())
        .collect()
}

/// The first Rust block after the README's "API in ten lines" heading.
fn readme_snippet() -> Vec<String> {
    let readme = include_str!("../README.md");
    readme
        .lines()
        .skip_while(|l| !l.starts_with("## API in ten lines"))
        .skip_while(|l| !l.starts_with("```rust"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_snippet_is_the_quickstart_example_and_has_no_unsafe() {
    let (readme, example) = (readme_snippet(), example_snippet());
    assert!(
        !example.is_empty(),
        "markers missing in examples/quickstart.rs"
    );
    assert_eq!(
        readme, example,
        "README.md and examples/quickstart.rs disagree"
    );
    let code_with_unsafe: Vec<&str> = include_str!("../examples/quickstart.rs")
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .filter(|code| code.contains("unsafe"))
        .collect();
    assert!(
        code_with_unsafe.is_empty(),
        "unsafe in the quickstart: {code_with_unsafe:?}"
    );
}

#[test]
fn the_readme_program_runs_cleanly_twenty_times() {
    let bin = tramway_harness::example_bin::example_binary("quickstart");
    for run in 0..20 {
        let out = Command::new(&bin).output().expect("run quickstart");
        assert!(
            out.status.success(),
            "run {run}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("0 unexpected results") && stdout.contains("0 code bytes still mapped"),
            "run {run}: {stdout}"
        );
    }
}
