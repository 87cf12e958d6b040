//! Hostile clients in the soak (`SOAK_HOSTILE`, their share of the clients): users who
//! try to hold as much of the server as they can without moving many bytes, and peers who
//! send garbage. Their own requests may be refused; what the soak checks is that
//! everyone else keeps every guarantee, that memory stays under the same ceiling, that
//! a hoarder's READ is still answered, and that nothing of theirs stays in the bucket
//! (no object, no pending multipart upload) beyond what the server acknowledged.
//!
//! Each round is one of: many read handles on one object, a little read from each, held,
//! then the connection dropped; uploads declaring 1 TiB with writes far ahead of any
//! data, dropped without CLOSE; an SFTP channel fed garbage; SSH banners and nothing
//! else on a handful of sockets.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use russh::ChannelMsg;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::AsyncWriteExt;

use super::ledger::{Outcome, SharedLedger, State, Stats};
use super::russh_client::{connect, login};
use super::server::MIB;
use super::ClientSpec;
use crate::common::{random_bytes, sha256};

/// The object the hoarder opens its read handles on.
const HOARD: &str = "/hoard.bin";
const HOARD_SIZE: usize = 8 * MIB as usize;
/// Read handles a hoarder asks for in one round.
const HANDLES: usize = 64;
/// Uploads declaring 1 TiB in one round, and the writes ahead sent to each.
const HUGE_UPLOADS: usize = 8;
const WRITES_AHEAD: u64 = 8;
/// How long a hoarder's last READ may take before it counts as unanswered: far longer
/// than the server's worst case for one S3 request (4 attempts of 10 s plus backoff).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

pub async fn run(spec: ClientSpec, stats: Arc<Stats>, ledger: SharedLedger) {
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x4057_11e5);
    let hoard = random_bytes(HOARD_SIZE, spec.seed);
    let mut have_hoard = false;
    while !spec.stopped() {
        if !have_hoard {
            have_hoard = put_hoard(&spec, &stats, &ledger, &hoard).await;
        }
        let round = rng.random_range(0..4u32);
        match round {
            0 if have_hoard => hoard_handles(&spec, &stats).await,
            0 | 1 => declare_huge(&spec, &stats, &ledger).await,
            2 => garbage(&spec, &stats, &mut rng).await,
            _ => banners(&spec, &stats).await,
        }
        let pause = rng.random_range(0..=spec.think_ms.max(1) * 2);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Uploads the object the hoarder reads; whether it is there.
async fn put_hoard(spec: &ClientSpec, stats: &Stats, ledger: &SharedLedger, data: &[u8]) -> bool {
    let sha = sha256(data);
    ledger.set(
        HOARD,
        State::Uncertain {
            sha: sha.clone(),
            why: "hostile client's upload in flight",
        },
    );
    let Ok(s) = connect(spec).await else {
        return false;
    };
    match s.upload(HOARD, data).await {
        Ok(()) => {
            stats.op("hostile: upload", Outcome::Ok);
            ledger.set(
                HOARD,
                State::Acked {
                    sha,
                    size: data.len() as u64,
                },
            );
            true
        }
        Err(e) => {
            stats.failure("hostile: upload", Outcome::Unknown, &e);
            false
        }
    }
}

/// Opens many read handles on the hoard, reads 32 KiB from each, holds them, checks that
/// one more READ is answered, then drops the connection without closing anything.
async fn hoard_handles(spec: &ClientSpec, stats: &Stats) {
    let Ok(s) = connect(spec).await else {
        return;
    };
    s.raw.set_timeout(ANSWER_WITHIN.as_secs());
    let mut handles = Vec::new();
    for i in 0..HANDLES {
        if spec.stopped() {
            break;
        }
        let opened = s
            .raw
            .open(HOARD, OpenFlags::READ, FileAttributes::empty())
            .await;
        let Ok(h) = opened else {
            stats.note("hostile: read handle refused");
            continue;
        };
        stats.note("hostile: read handle granted");
        let offset = (i as u64 * 128 * 1024) % HOARD_SIZE as u64;
        match s.raw.read(&h.handle, offset, 32 * 1024).await {
            Ok(_) => stats.note("hostile: hoarder read answered"),
            Err(SftpError::Timeout) => {
                stats.violation(format!(
                    "client {}: a hoarder's READ got no answer in {} s",
                    spec.id,
                    ANSWER_WITHIN.as_secs()
                ));
                return;
            }
            Err(_) => stats.note("hostile: hoarder read refused"),
        }
        handles.push(h.handle);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(first) = handles.first() {
        if let Err(SftpError::Timeout) = s.raw.read(first, 0, 32 * 1024).await {
            stats.violation(format!(
                "client {}: with {} read handles held, a READ got no answer in {} s",
                spec.id,
                handles.len(),
                ANSWER_WITHIN.as_secs()
            ));
        }
    }
    // Dropped without CLOSE: the server must let go of everything.
}

/// Opens uploads that declare 1 TiB and writes only far ahead of any data, then drops the
/// connection without CLOSE: nothing may be stored, no multipart upload may stay.
async fn declare_huge(spec: &ClientSpec, stats: &Stats, ledger: &SharedLedger) {
    let Ok(s) = connect(spec).await else {
        return;
    };
    let declared = FileAttributes {
        size: Some(1 << 40),
        ..FileAttributes::empty()
    };
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let chunk = vec![0x5a; 32 * 1024];
    for _ in 0..HUGE_UPLOADS {
        let path = ledger.fresh_path(spec.id, "", "huge");
        ledger.set(
            &path,
            State::Absent {
                why: "hostile upload dropped without CLOSE",
            },
        );
        let Ok(h) = s.raw.open(&path, flags, declared.clone()).await else {
            stats.note("hostile: 1 TiB upload refused at OPEN");
            continue;
        };
        stats.note("hostile: 1 TiB upload opened");
        for j in 0..WRITES_AHEAD {
            let offset = 256 * MIB + j * MIB;
            match s.raw.write(&h.handle, offset, chunk.clone()).await {
                Ok(_) => stats.note("hostile: write ahead accepted"),
                Err(_) => stats.note("hostile: write ahead refused"),
            }
        }
    }
}

/// Logs in, opens the SFTP subsystem and feeds it garbage after a valid INIT: a packet
/// that claims 2 GiB, or random bytes. The server should end the channel.
async fn garbage(spec: &ClientSpec, stats: &Stats, rng: &mut StdRng) {
    let Ok(handle) = login(spec).await else {
        return;
    };
    let Ok(mut channel) = handle.channel_open_session().await else {
        return;
    };
    if channel.request_subsystem(true, "sftp").await.is_err() {
        return;
    }
    // SSH_FXP_INIT, version 3.
    let mut bytes = vec![0, 0, 0, 5, 1, 0, 0, 0, 3];
    if rng.random_bool(0.5) {
        bytes.extend_from_slice(&[0x7f, 0xff, 0xff, 0xf0, 3]);
        bytes.extend((0..4096).map(|_| rng.random::<u8>()));
    } else {
        bytes.extend((0..8192).map(|_| rng.random::<u8>()));
    }
    if channel.data(&bytes[..]).await.is_err() {
        return;
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = channel.wait().await {
            if matches!(msg, ChannelMsg::Close | ChannelMsg::Eof) {
                break;
            }
        }
    })
    .await;
    stats.note(if ended.is_ok() {
        "hostile: garbage channel ended by the server"
    } else {
        "hostile: garbage channel still open after 30 s"
    });
}

/// A few TCP connections that send an SSH banner and nothing else, held for 2 s.
async fn banners(spec: &ClientSpec, stats: &Stats) {
    let mut sockets = Vec::new();
    for _ in 0..8 {
        if let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", spec.port)).await {
            if socket.write_all(b"SSH-2.0-soak-hostile\r\n").await.is_ok() {
                sockets.push(socket);
            }
        }
    }
    stats.note("hostile: banner-only sockets round");
    tokio::time::sleep(Duration::from_secs(2)).await;
}
