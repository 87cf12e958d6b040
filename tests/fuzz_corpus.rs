//! Replays the fuzz corpus (`fuzz/corpus/<target>/`: the seeds, and every input that once
//! made a target fail) through the fuzz targets' own checks, so a regression shows up in
//! `cargo test` without cargo-fuzz or a nightly flag. See `fuzz/README.md`.

#[path = "../fuzz/checks/path_parse.rs"]
mod path_parse;
#[path = "../fuzz/checks/scp_control.rs"]
mod scp_control;
#[path = "../fuzz/checks/sftp_decode.rs"]
mod sftp_decode;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its checks", path.display());
        count += 1;
    }
    assert!(count >= 5, "only {count} inputs in {}", dir.display());
}

#[test]
fn path_parse_corpus() {
    replay("path_parse", path_parse::check);
}

#[test]
fn scp_control_corpus() {
    replay("scp_control", scp_control::check);
}

#[test]
fn sftp_decode_corpus() {
    replay("sftp_decode", sftp_decode::check);
}
