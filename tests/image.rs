//! The container image users deploy, for real: built from the Dockerfile with podman without pulling any
//! image (its runtime stage is `FROM scratch`; `scripts/image-rootfs.sh` gathers the binary and its
//! libraries), then run as the Helm chart runs it — read-only root, user 65532, every capability dropped,
//! no new privileges — against the VVP simulator: a savepoint is taken from inside the container, and
//! /metrics is scraped from outside it.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::vvp_sim::{VvpSim, VvpSimOptions};
use support::{eventually, free_port};

const TOKEN: &str = "image-test-token";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman (scripts/test.sh installs it)")
}

fn ok(output: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// Removes the container, the image and the build's intermediate stage images when the test ends,
/// however it ends.
struct Cleanup {
    container: String,
    image: String,
    stages: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "2", &self.container]);
        let _ = podman(&["rmi", "-f", &self.image]);
        for stage in &self.stages {
            let _ = podman(&["rmi", "-f", stage]);
        }
    }
}

fn write_readable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    // The container runs as 65532; the files belong to whoever runs the test.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_takes_a_savepoint_as_the_chart_runs_it() {
    let vvp = VvpSim::start(VvpSimOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    vvp.add_deployment("orders", "a1111111-1111-4111-8111-111111111111", "RUNNING");
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("Dockerfile"), context.join("Dockerfile")).unwrap();
    let rootfs = Command::new(repo.join("scripts/image-rootfs.sh"))
        .arg(env!("CARGO_BIN_EXE_savepointd"))
        .arg(context.join("image-rootfs"))
        .output()
        .unwrap();
    ok(&rootfs, "scripts/image-rootfs.sh");

    let tag = format!("localhost/savepointd:test-{}", std::process::id());
    let mut cleanup = Cleanup {
        container: format!("savepointd-test-{}", std::process::id()),
        image: tag.clone(),
        stages: Vec::new(),
    };
    let context_text = context.to_str().unwrap();
    let built = podman(&[
        "build",
        "--build-arg",
        "ROOTFS=context",
        "-t",
        &tag,
        context_text,
    ]);
    // Each stage's image id is printed as `--> <id>`.
    cleanup.stages = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("--> "))
        .map(|id| id.trim().to_owned())
        .collect();
    ok(&built, "podman build (no base image may be pulled)");
    let size: u64 = ok(
        &podman(&["image", "inspect", "--format", "{{.Size}}", &tag]),
        "podman image inspect",
    )
    .trim()
    .parse()
    .unwrap();
    println!("image: {tag}, {:.1} MiB", size as f64 / (1 << 20) as f64);

    let port = free_port();
    let config = dir.path().join("config.yaml");
    let token = dir.path().join("token");
    write_readable(&token, TOKEN);
    write_readable(
        &config,
        &format!(
            r#"
server: {{ listen: "127.0.0.1:{port}", shutdownGrace: 2s }}
defaults: {{ schedule: "* * * * * *" }}
platforms:
  - name: vvp
    kind: vvp
    url: {url}
    auth: {{ tokenFile: /var/run/secrets/savepointd/token }}
    resolve: {{ via: api }}
applications: [orders]
"#,
            url = vvp.url
        ),
    );
    let config_mount = format!("{}:/etc/savepointd/config.yaml:ro", config.display());
    let token_mount = format!("{}:/var/run/secrets/savepointd/token:ro", token.display());
    // The chart's securityContext. runc rather than crun, and file and process limits no higher than
    // the machine's: this machine's container runtime cannot raise them.
    ok(
        &podman(&[
            "run",
            "-d",
            "--name",
            &cleanup.container,
            "--runtime",
            "runc",
            "--network",
            "host",
            "--read-only",
            "--user",
            "65532:65532",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "-v",
            &config_mount,
            "-v",
            &token_mount,
            &tag,
        ]),
        "podman run",
    );

    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let success = "savepointd_savepoint_success_total{application=\"orders\",platform=\"vvp\"}";
    let scraped = eventually(Duration::from_secs(30), || async {
        let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(success)?.trim().parse().ok())?;
        (value >= 1.0).then_some(text)
    })
    .await;
    let logs = ok(&podman(&["logs", &cleanup.container]), "podman logs");
    let scraped =
        scraped.unwrap_or_else(|| panic!("no completed savepoint scraped from outside:\n{logs}"));
    assert!(scraped.contains("savepointd_build_info"), "{scraped}");
    assert!(
        !vvp.triggers().is_empty(),
        "the simulator saw the savepoint"
    );
    assert!(
        vvp.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "the token mounted read-only reached the platform"
    );
    // SIGTERM, as Kubernetes stops a pod: the daemon ends cleanly.
    ok(
        &podman(&["stop", "-t", "10", &cleanup.container]),
        "podman stop",
    );
    let code = ok(
        &podman(&[
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &cleanup.container,
        ]),
        "podman inspect",
    );
    assert_eq!(code.trim(), "0", "exit code after SIGTERM:\n{logs}");
}
