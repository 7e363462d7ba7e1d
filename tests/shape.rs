//! The crate's shape (issue 14): the default features pull in no HTTP or serde stack, the
//! module graph has no cycle, README.md stays short and every link in the docs resolves.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.current_dir(root()).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn default_features_build_no_http_serde_or_tracing() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tree = run(Command::new(&cargo).args([
        "tree",
        "-e",
        "normal",
        "--no-default-features",
        "-p",
        "brood",
        "--prefix",
        "none",
    ]));
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            ![
                "hyper",
                "serde",
                "serde_json",
                "tracing",
                "bcrypt",
                "base64"
            ]
            .contains(&name),
            "the default build pulls in {line}"
        );
    }
    assert!(tree.lines().any(|l| l.starts_with("tokio ")), "{tree}");
}

#[test]
fn module_graph_has_no_cycle() {
    let graph = run(Command::new("python3").args([".ci/modgraph.py"]));
    assert!(graph.contains("process "), "{graph}");
    assert!(graph.ends_with("no cycles\n"), "{graph}");
}

#[test]
fn readme_is_short_and_every_doc_link_resolves() {
    let readme = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(readme <= 15 * 1024, "README.md is {readme} bytes");
    run(Command::new("python3").arg(".ci/links.py"));
}
