//! SSH tunnels through a bastion, with the system `ssh` client.
//!
//! `ssh -N -L 127.0.0.1:<free port>:<db host>:<db port>` runs for as long as
//! the [`Tunnel`] lives; connections then go to `hostaddr=127.0.0.1` and the
//! forwarded port while TLS still checks the real database host name.
//!
//! Secrets: a private key given as PEM contents (or as a path: copied, so that
//! its permissions never matter) is written to a private 0700 directory as a
//! 0600 file and removed with the tunnel; a passphrase reaches `ssh-keygen`
//! only through `SSH_ASKPASS` (never argv), and the key is decrypted into that
//! private copy so `ssh` runs in `BatchMode` (it never prompts).
//!
//! Host keys: trust on first use, remembered in a known-hosts file of ours
//! (`StrictHostKeyChecking=accept-new`), or pinned with `ssh_tunnel.host_key`.
//!
//! Lifetime: dropped → ssh is stopped. If the process dies without dropping
//! (SIGKILL, abort), a tiny watcher stops ssh and removes the private
//! directory as soon as the process is gone.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::settings::SshTunnelSettings;

/// Why a tunnel could not be opened: one message saying what to fix, with
/// the I/O error underneath where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A local step (private files, a free port, running ssh) failed.
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A `ssh_tunnel.*` setting is wrong.
    #[error("{0}")]
    Setting(String),
    /// ssh failed; the message classifies its own words.
    #[error("{0}")]
    Ssh(String),
}

fn local(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TunnelError {
    let what = what.into();
    move |source| TunnelError::Local { what, source }
}

/// How many of ssh's last stderr lines are kept for error messages.
const KEPT_LINES: usize = 40;

/// ssh's last stderr lines, and how many there have been.
#[derive(Default)]
struct Lines {
    total: usize,
    kept: VecDeque<String>,
}
type SshLog = Arc<Mutex<Lines>>;

fn lock(log: &SshLog) -> std::sync::MutexGuard<'_, Lines> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running `ssh -L` forward. Stops ssh when dropped.
pub(crate) struct Tunnel {
    ssh: Mutex<Child>,
    watcher: Option<Child>,
    local_port: u16,
    stderr: SshLog,
    db: String,
    // Holds the key copy and the askpass script; removed on drop.
    _private: tempfile::TempDir,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local_port", &self.local_port)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Where trusted-on-first-use bastion keys are remembered by default:
/// `$XDG_STATE_HOME/singer-postgres-rs/known_hosts`, else
/// `~/.local/state/singer-postgres-rs/known_hosts`.
pub(crate) fn default_known_hosts() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(state.join("singer-postgres-rs").join("known_hosts"))
}

fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), TunnelError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(local(format!("cannot write {}", path.display())))?;
    f.write_all(contents)
        .map_err(local(format!("cannot write {}", path.display())))
}

/// The key's text: PEM/OpenSSH contents as given (newlines escaped as `\n`
/// accepted), or the contents of the file it names.
fn key_text(value: &str) -> Result<String, TunnelError> {
    let mut text = if value.trim_start().starts_with("-----BEGIN") {
        value.to_owned()
    } else {
        let path = Path::new(value);
        if !path.exists() {
            return Err(TunnelError::Setting(format!(
                "ssh_tunnel.private_key: file {value:?} does not exist (give the key's contents or the path of a readable file)"
            )));
        }
        std::fs::read_to_string(path).map_err(local(format!(
            "ssh_tunnel.private_key: cannot read file {value:?}"
        )))?
    };
    if !text.contains('\n') && text.contains("\\n") {
        text = text.replace("\\n", "\n");
    }
    // ssh rejects an OpenSSH key without its final newline.
    let mut text = text.trim().to_owned();
    text.push('\n');
    Ok(text)
}

/// A known-hosts line pinning `value` (`type base64`, or a whole known_hosts
/// line) for whatever host this private file is used with.
fn pinned_known_hosts(value: &str) -> Result<String, TunnelError> {
    let tokens: Vec<&str> = value.split_whitespace().collect();
    let at = tokens
        .iter()
        .position(|t| {
            t.starts_with("ssh-")
                || t.starts_with("ecdsa-")
                || t.starts_with("sk-")
                || t.starts_with("rsa-")
        })
        .filter(|i| i + 1 < tokens.len())
        .ok_or_else(|| {
            TunnelError::Setting("ssh_tunnel.host_key must be a public key such as `ssh-ed25519 AAAA...` (a line of known_hosts or of the bastion's /etc/ssh/ssh_host_*_key.pub)".to_string())
        })?;
    Ok(format!("* {} {}\n", tokens[at], tokens[at + 1]))
}

fn free_local_port() -> Result<u16, TunnelError> {
    const WHAT: &str = "cannot find a free local port for the SSH tunnel";
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(local(WHAT))?;
    l.local_addr().map(|a| a.port()).map_err(local(WHAT))
}

/// Runs `ssh-keygen` with the passphrase given only through `SSH_ASKPASS`.
fn keygen(askpass: &Path, passphrase: &str, args: &[&str], key: &Path) -> Result<(), String> {
    let out = Command::new("ssh-keygen")
        .args(args)
        .arg("-f")
        .arg(key)
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("PG_CONNECT_SSH_PASSPHRASE", passphrase)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen (install openssh-client): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Writes a usable, unencrypted private copy of the key into `dir`.
fn prepare_key(dir: &Path, s: &SshTunnelSettings) -> Result<Option<PathBuf>, TunnelError> {
    let Some(value) = &s.private_key else {
        return Ok(None);
    };
    let key = dir.join("id");
    write_private(&key, key_text(value)?.as_bytes(), 0o600)?;
    let askpass = dir.join("askpass");
    write_private(
        &askpass,
        b"#!/bin/sh\nprintf '%s\\n' \"$PG_CONNECT_SSH_PASSPHRASE\"\n",
        0o700,
    )?;
    let passphrase = s.private_key_password.as_deref().unwrap_or("");
    if !passphrase.is_empty() {
        // Decrypt the private copy, so that ssh itself never needs to ask.
        keygen(&askpass, passphrase, &["-q", "-p", "-N", ""], &key).map_err(|e| {
            TunnelError::Setting(if e.contains("incorrect passphrase") {
                "ssh_tunnel.private_key_password does not decrypt ssh_tunnel.private_key"
                    .to_string()
            } else {
                "ssh_tunnel.private_key is not a private key ssh can read (OpenSSH or PEM format)"
                    .to_string()
            })
        })?;
    }
    keygen(&askpass, "", &["-y", "-P", ""], &key).map_err(|e| {
        TunnelError::Setting(if e.contains("incorrect passphrase") {
            "ssh_tunnel.private_key is protected by a passphrase: set ssh_tunnel.private_key_password".to_string()
        } else {
            "ssh_tunnel.private_key is not a private key ssh can read (OpenSSH or PEM format)"
                .to_string()
        })
    })?;
    Ok(Some(key))
}

impl Tunnel {
    /// Opens the tunnel to `db_host:db_port` as the bastion sees it and
    /// waits (up to `timeout`) until its local port accepts connections.
    pub(crate) fn open(
        s: &SshTunnelSettings,
        db_host: &str,
        db_port: u16,
        timeout: Duration,
    ) -> Result<Tunnel, TunnelError> {
        let private = tempfile::Builder::new()
            .prefix("pg-connect-ssh-")
            .tempdir()
            .map_err(local("cannot create a private temporary directory"))?;
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(local("cannot make the temporary directory private"))?;
        let key = prepare_key(private.path(), s)?;
        let (known_hosts, strict) = match &s.host_key {
            Some(pin) => {
                let path = private.path().join("pinned_known_hosts");
                write_private(&path, pinned_known_hosts(pin)?.as_bytes(), 0o600)?;
                (path, "yes")
            }
            None => {
                let path = match &s.known_hosts_file {
                    Some(p) => PathBuf::from(p),
                    None => {
                        default_known_hosts().unwrap_or_else(|| private.path().join("known_hosts"))
                    }
                };
                if let Some(parent) = path.parent() {
                    if !parent.as_os_str().is_empty() && !parent.exists() {
                        std::fs::create_dir_all(parent).map_err(local(format!(
                            "cannot create {} for known hosts",
                            parent.display()
                        )))?;
                        let _ = std::fs::set_permissions(
                            parent,
                            std::fs::Permissions::from_mode(0o700),
                        );
                    }
                }
                (path, "accept-new")
            }
        };
        let mut last = TunnelError::Ssh(String::new());
        // A free port can be taken between our probe and ssh's bind: retry.
        for _ in 0..3 {
            let local_port = free_local_port()?;
            match Tunnel::spawn(
                s,
                db_host,
                db_port,
                local_port,
                key.as_deref(),
                &known_hosts,
                strict,
                timeout,
                private.path(),
            ) {
                Ok((ssh, watcher, stderr)) => {
                    return Ok(Tunnel {
                        ssh: Mutex::new(ssh),
                        watcher,
                        local_port,
                        stderr,
                        db: format!("{db_host}:{db_port}"),
                        _private: private,
                    })
                }
                Err(Failure::PortTaken(e)) => last = e,
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
        Err(last)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        s: &SshTunnelSettings,
        db_host: &str,
        db_port: u16,
        local_port: u16,
        key: Option<&Path>,
        known_hosts: &Path,
        strict: &str,
        timeout: Duration,
        private_dir: &Path,
    ) -> Result<(Child, Option<Child>, SshLog), Failure> {
        let target = if db_host.contains(':') {
            format!("[{db_host}]")
        } else {
            db_host.to_owned()
        };
        let mut cmd = Command::new("ssh");
        cmd.args(["-N", "-T", "-F", "/dev/null"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            .arg("-o")
            .arg(format!("ConnectTimeout={}", timeout.as_secs().max(1)))
            .args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
            ])
            .arg("-o")
            .arg(format!("StrictHostKeyChecking={strict}"))
            .arg("-o")
            // Quoted: ssh splits this option's value on spaces.
            .arg(format!("UserKnownHostsFile=\"{}\"", known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "CheckHostIP=no",
            ])
            .args(["-o", "PreferredAuthentications=publickey"])
            .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
        if let Some(key) = key {
            cmd.args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i"])
                .arg(key);
        }
        cmd.arg("-L")
            .arg(format!("127.0.0.1:{local_port}:{target}:{db_port}"))
            .arg("-p")
            .arg(s.port.to_string())
            .arg("-l")
            .arg(&s.username)
            .arg("--")
            .arg(&s.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches us, and we stop it.
            .process_group(0);
        let mut ssh = cmd
            .spawn()
            .map_err(|e| Failure::Fatal(local("cannot run ssh (install openssh-client)")(e)))?;
        let stderr = SshLog::default();
        let reader = ssh.stderr.take().map(|pipe| {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let line = line.trim().to_owned();
                    if line.is_empty() {
                        continue;
                    }
                    tracing::info!("ssh: {line}");
                    let mut log = lock(&lines);
                    if log.kept.len() == KEPT_LINES {
                        log.kept.pop_front();
                    }
                    log.kept.push_back(line);
                    log.total += 1;
                }
            })
        });
        let watcher = Command::new("sh")
            .args([
                "-c",
                "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
                 kill -0 \"$1\" 2>/dev/null || { kill \"$2\" 2>/dev/null; rm -rf \"$3\"; }",
                "pg-connect-tunnel-watcher",
            ])
            .arg(std::process::id().to_string())
            .arg(ssh.id().to_string())
            .arg(private_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        let stop = |mut ssh: Child, watcher: Option<Child>| {
            let _ = ssh.kill();
            let _ = ssh.wait();
            if let Some(mut w) = watcher {
                let _ = w.kill();
                let _ = w.wait();
            }
        };
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, local_port));
        let deadline = Instant::now() + timeout + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = ssh.try_wait() {
                if let Some(r) = reader {
                    let _ = r.join();
                }
                stop(ssh, watcher);
                let text = lock(&stderr).kept.iter().cloned().collect::<Vec<_>>();
                return Err(classify(s, known_hosts, strict, local_port, status, &text));
            }
            // ssh listens only once the session is up; an empty probe
            // connection is not logged by Postgres.
            if TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
                if matches!(ssh.try_wait(), Ok(None)) {
                    tracing::info!(
                        "SSH tunnel to {db_host}:{db_port} via {}@{}:{} listening on 127.0.0.1:{local_port}",
                        s.username,
                        s.host,
                        s.port
                    );
                    return Ok((ssh, watcher, stderr));
                }
                continue;
            }
            if Instant::now() > deadline {
                stop(ssh, watcher);
                return Err(Failure::Fatal(TunnelError::Ssh(format!(
                    "the SSH tunnel via {}:{} did not open within {}s",
                    s.host,
                    s.port,
                    timeout.as_secs()
                ))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The forwarded port on 127.0.0.1.
    pub(crate) fn local_port(&self) -> u16 {
        self.local_port
    }

    /// How many lines ssh has written so far (see [`Tunnel::diagnose`]).
    pub(crate) fn mark(&self) -> usize {
        lock(&self.stderr).total
    }

    /// Why a connection through the tunnel failed, from ssh's side, looking
    /// only at what ssh said after `mark`: ssh has exited, or the bastion
    /// could not reach the database.
    pub(crate) fn diagnose(&self, mark: usize) -> Option<String> {
        // ssh reports a failed channel just before it closes our socket;
        // give its stderr a moment to arrive.
        let deadline = Instant::now() + Duration::from_millis(300);
        loop {
            let exited = self
                .ssh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_wait()
                .ok()
                .flatten();
            let log = lock(&self.stderr);
            let fresh = log.total.saturating_sub(mark).min(log.kept.len());
            let new_lines = log.kept.iter().skip(log.kept.len() - fresh);
            if let Some(status) = exited {
                return Some(format!(
                    "the SSH tunnel has closed ({status}){}",
                    log.kept
                        .back()
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                ));
            }
            let open_failed = new_lines
                .rev()
                .find_map(|l| l.split_once("open failed: "))
                .map(|(_, why)| why.to_owned());
            if let Some(why) = open_failed {
                return Some(format!(
                    "the SSH bastion cannot reach the database at {} ({why})",
                    self.db
                ));
            }
            drop(log);
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let ssh = self.ssh.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = ssh.kill();
        let _ = ssh.wait();
        if let Some(w) = &mut self.watcher {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

enum Failure {
    PortTaken(TunnelError),
    Fatal(TunnelError),
}

/// One line saying what to fix, from ssh's exit and stderr.
fn classify(
    s: &SshTunnelSettings,
    known_hosts: &Path,
    strict: &str,
    local_port: u16,
    status: std::process::ExitStatus,
    lines: &[String],
) -> Failure {
    let all = lines.join("\n");
    let last = lines
        .iter()
        .rev()
        .find(|l| !l.starts_with('@') && !l.starts_with("Warning"))
        .cloned()
        .unwrap_or_else(|| format!("ssh exited ({status})"));
    let bastion = format!("{}:{}", s.host, s.port);
    let fatal = |m: String| Failure::Fatal(TunnelError::Ssh(m));
    if all.contains("Could not resolve hostname") {
        return fatal(format!(
            "cannot resolve the SSH bastion host `{}` (ssh_tunnel.host): {last}",
            s.host
        ));
    }
    if all.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || all.contains("Host key verification failed")
    {
        return fatal(if strict == "yes" {
            format!("the SSH bastion {bastion} presented a host key that does not match ssh_tunnel.host_key")
        } else {
            format!(
                "the SSH bastion {bastion} presented a host key different from the one trusted on first use, remembered in {}: if the change is expected, remove the line for {} from that file (or pin the new key with ssh_tunnel.host_key)",
                known_hosts.display(),
                if s.port == 22 { s.host.clone() } else { format!("[{}]:{}", s.host, s.port) }
            )
        });
    }
    if all.contains("Permission denied") {
        return fatal(format!(
            "the SSH bastion {bastion} refused the key for user `{}`: check ssh_tunnel.username and ssh_tunnel.private_key (its public key must be in that user's authorized_keys)",
            s.username
        ));
    }
    for unreachable in [
        "Connection refused",
        "No route to host",
        "Connection timed out",
        "Network is unreachable",
        "Operation timed out",
        "Connection closed by",
        "Connection reset",
    ] {
        if all.contains(unreachable) {
            return fatal(format!(
                "cannot reach the SSH bastion at {bastion} (check ssh_tunnel.host and ssh_tunnel.port): {last}"
            ));
        }
    }
    // Another process took the port between our probe and ssh's bind.
    if all.contains("Could not request local forwarding") {
        return Failure::PortTaken(TunnelError::Ssh(format!(
            "cannot forward 127.0.0.1:{local_port}: {last}"
        )));
    }
    fatal(format!("the SSH tunnel via {bastion} failed: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_local_port_is_retried_not_reported() {
        use std::os::unix::process::ExitStatusExt;
        let s = SshTunnelSettings {
            host: "bastion".into(),
            port: 22,
            username: "me".into(),
            private_key: None,
            private_key_password: None,
            host_key: None,
            known_hosts_file: None,
        };
        // ssh's own words (OpenSSH 9.2) when the port was taken under it.
        let lines: Vec<String> = [
            "bind [127.0.0.1]:43333: Address already in use",
            "channel_setup_fwd_listener_tcpip: cannot listen to port: 43333",
            "Could not request local forwarding.",
        ]
        .map(String::from)
        .to_vec();
        let status = std::process::ExitStatus::from_raw(255 << 8);
        let known = Path::new("/k");
        match classify(&s, known, "accept-new", 43333, status, &lines) {
            Failure::PortTaken(m) => assert_eq!(
                m.to_string(),
                "cannot forward 127.0.0.1:43333: Could not request local forwarding."
            ),
            Failure::Fatal(m) => panic!("fatal: {m}"),
        }
        let refused = vec!["ssh: connect to host bastion port 22: Connection refused".to_string()];
        match classify(&s, known, "accept-new", 43333, status, &refused) {
            Failure::Fatal(m) => assert_eq!(
                m.to_string(),
                "cannot reach the SSH bastion at bastion:22 (check ssh_tunnel.host and ssh_tunnel.port): ssh: connect to host bastion port 22: Connection refused"
            ),
            Failure::PortTaken(m) => panic!("retried: {m}"),
        }
    }

    #[test]
    fn pins_a_key_or_a_known_hosts_line() {
        assert_eq!(
            pinned_known_hosts("ssh-ed25519 AAAAC3 comment").unwrap(),
            "* ssh-ed25519 AAAAC3\n"
        );
        assert_eq!(
            pinned_known_hosts("[bastion]:2222 ecdsa-sha2-nistp256 AAAAE2").unwrap(),
            "* ecdsa-sha2-nistp256 AAAAE2\n"
        );
        assert!(pinned_known_hosts("AAAAC3 only")
            .unwrap_err()
            .to_string()
            .starts_with("ssh_tunnel.host_key must be a public key"));
    }

    #[test]
    fn key_text_accepts_escaped_newlines_and_adds_the_last_one() {
        assert_eq!(
            key_text(
                "-----BEGIN OPENSSH PRIVATE KEY-----\\nabc\\n-----END OPENSSH PRIVATE KEY-----"
            )
            .unwrap(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
        );
        assert_eq!(
            key_text("/nonexistent/id_ed25519").unwrap_err().to_string(),
            "ssh_tunnel.private_key: file \"/nonexistent/id_ed25519\" does not exist (give the key's contents or the path of a readable file)"
        );
    }
}
