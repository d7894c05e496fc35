//! The deployment files, checked offline by `scripts/validate-deploy.sh`: the compose file
//! against the Compose specification, the Kubernetes manifests (base and every component)
//! rendered with kustomize and checked against the Kubernetes schemas, the "restricted" Pod
//! Security level, the probes, the custom resources and the alert rules. No Docker engine
//! or cluster is needed; the tools come from `scripts/setup-test-deps.sh`.

use std::process::Command;

use vigil_tests::repo_root;

#[test]
fn compose_file_and_kubernetes_manifests_pass_their_checks() {
    let script = repo_root().join("scripts/validate-deploy.sh");
    let out = Command::new(&script).output().unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed ({}):\n{log}", script.display(), out.status);
    assert!(log.contains("all deployment checks passed"), "{log}");
}
