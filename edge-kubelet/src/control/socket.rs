//! The control socket: how `edge-kubelet pause|drain|resume` reach the running agent.
//!
//! A Unix socket in the state folder, mode 0600, and each caller's uid checked against the
//! agent's own (root may always): only the machine's owner can use it. One request line
//! (`pause`, `drain`, `resume` or `status`, at most 16 bytes, within 5 s), one JSON line back
//! (the [`AvailabilityStatus`]); at most 8 connections at once.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::availability::{Availability, AvailabilityStatus};
use crate::error::{Error, Result};

/// The socket's file name in the state folder.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line.
const MAX_REQUEST: u64 = 16;
/// How long a caller has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 8;

/// Serves the control socket in `state_dir` until `stop`.
pub async fn serve(
    state_dir: &Path,
    availability: Availability,
    stop: CancellationToken,
) -> Result<()> {
    let path = state_dir.join(CONTROL_SOCKET);
    // A socket left by an earlier run (a crash) is replaced; anything else is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::Control(format!(
                "{} exists and is not a socket; remove it",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| Error::Control(format!("control socket {}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Control(format!("control socket {}: {e}", path.display())))?;
    let me = own_uid();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(socket = %path.display(), "control socket ready (pause, drain, resume)");
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let peer = stream.peer_cred().map(|c| c.uid()).ok();
        if peer.is_none_or(|uid| uid != 0 && Some(uid) != me) {
            tracing::warn!(
                ?peer,
                "control socket: refusing a caller that is not the owner"
            );
            continue;
        }
        let availability = availability.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &availability).await {
                tracing::debug!(error = %e, "control socket request");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// The uid this process runs as (the owner of `/proc/self`).
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

async fn answer(stream: UnixStream, availability: &Availability) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) => match line.trim() {
            "pause" => {
                availability.pause().await;
                Ok(availability.current())
            }
            "drain" => {
                availability.drain().await;
                Ok(availability.current())
            }
            "resume" => {
                availability.resume().await;
                Ok(availability.current())
            }
            "status" => Ok(availability.current()),
            other => Err(format!(
                "unknown request {:?}: pause, drain, resume or status",
                other.chars().take(16).collect::<String>()
            )),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no request within 5 s".to_string()),
    };
    let body = match reply {
        Ok(status) => serde_json::to_string(&status).unwrap_or_default(),
        Err(why) => serde_json::json!({ "error": why }).to_string(),
    };
    write.write_all(body.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Sends `request` to the agent running with `state_dir` and returns its answer.
pub async fn request(state_dir: &Path, request: &str) -> Result<AvailabilityStatus> {
    let path: PathBuf = state_dir.join(CONTROL_SOCKET);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        Error::Control(format!(
            "cannot reach the running edge-kubelet at {}: {e} (is `edge-kubelet run` running \
             with this --state-dir, as this user?)",
            path.display()
        ))
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| Error::Control(format!("control socket: {e}")))?;
    let mut line = String::new();
    BufReader::new(read.take(64 * 1024))
        .read_line(&mut line)
        .await
        .map_err(|e| Error::Control(format!("control socket: {e}")))?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        && let Some(e) = v.get("error").and_then(|e| e.as_str())
    {
        return Err(Error::Control(format!("edge-kubelet refused: {e}")));
    }
    serde_json::from_str(&line).map_err(|e| {
        Error::Control(format!(
            "control socket: unexpected answer {:?}: {e}",
            line.chars().take(200).collect::<String>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::availability::State;
    use super::*;

    #[tokio::test]
    async fn owner_requests_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let a = Availability::new(None);
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let (d, a, s) = (dir.path().to_path_buf(), a.clone(), stop.clone());
            async move { serve(&d, a, s).await }
        });
        let sock = dir.path().join(CONTROL_SOCKET);
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            request(dir.path(), "pause").await.unwrap().state,
            State::Paused
        );
        assert_eq!(a.current().state, State::Paused);
        assert_eq!(
            request(dir.path(), "drain").await.unwrap().state,
            State::Draining
        );
        assert_eq!(
            request(dir.path(), "resume").await.unwrap().state,
            State::Available
        );
        let e = request(dir.path(), "reboot-the-box")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown request"), "{e}");
        // An overlong request is cut at 16 bytes and refused.
        let e = request(dir.path(), &"x".repeat(10_000))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown request"), "{e}");
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(!sock.exists());
    }
}
