//! A throwaway SSH bastion for tunnel tests: OpenSSH's `sshd` on a loopback
//! port, with a generated host key and an authorized user key.
//!
//! Every accepted connection runs `sshd -i` (inetd mode), inside the network
//! namespace of a [`crate::Cluster`] started with `private_network`, so the
//! bastion reaches a database that nothing else outside can. [`Bastion::connections`]
//! counts the SSH connections it served: proof that traffic went through it.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{run, Cluster};

/// A running bastion. Stops accepting when dropped.
#[derive(Debug)]
pub struct Bastion {
    dir: tempdir::Dir,
    port: u16,
    user: String,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// `sshd` as Debian installs it (`apt-get install -y openssh-server`).
fn find_sshd() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = vec!["/usr/sbin/sshd".into(), "/usr/local/sbin/sshd".into()];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("sshd")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "sshd not found: install it with `apt-get install -y openssh-server`".to_string()
    })
}

fn keygen(path: &Path, passphrase: &str, comment: &str) -> Result<(), String> {
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
            .arg(path),
        "ssh-keygen",
    )
    .map(|_| ())
}

impl Bastion {
    /// Starts a bastion whose sessions run in `cluster`'s network (its
    /// private namespace when it has one).
    pub fn start(cluster: &Cluster) -> Bastion {
        Bastion::try_start(cluster).unwrap_or_else(|e| panic!("pg-testkit bastion: {e}"))
    }

    fn try_start(cluster: &Cluster) -> Result<Bastion, String> {
        let sshd = find_sshd()?;
        // Inside the cluster's directory, so that its watcher removes it too
        // (a bastion kept in a static is never dropped).
        let dir = tempdir::Dir::new(cluster.dir(), "bastion")?;
        let d = dir.path().to_path_buf();
        keygen(&d.join("host_ed25519"), "", "bastion-host")?;
        keygen(&d.join("user_ed25519"), "", "bastion-user")?;
        std::fs::copy(d.join("user_ed25519.pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        let user = run(Command::new("id").arg("-un"), "id -un")?
            .trim()
            .to_owned();
        // Privilege separation (sshd as root) needs its empty directory.
        if crate::running_as_root() {
            std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        }
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "HostKey {d}/host_ed25519\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 StrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 AllowTcpForwarding yes\n\
                 PermitTTY no\n\
                 PidFile none\n\
                 LogLevel VERBOSE\n",
                d = d.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bastion listener: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let netns = cluster
            .options()
            .private_network
            .then(|| format!("--net=/proc/{}/ns/net", cluster.postmaster_pid()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopping, config, log) = (
            connections.clone(),
            stop.clone(),
            d.join("sshd_config"),
            d.join("sshd.log"),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let input: OwnedFd = stream.into();
                let Ok(output) = input.try_clone() else {
                    continue;
                };
                let Ok(log) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                else {
                    continue;
                };
                let mut cmd = match &netns {
                    Some(ns) => {
                        let mut c = Command::new("nsenter");
                        c.arg(ns).arg(&sshd);
                        c
                    }
                    None => Command::new(&sshd),
                };
                cmd.args(["-i", "-e", "-f"])
                    .arg(&config)
                    .stdin(Stdio::from(input))
                    .stdout(Stdio::from(output))
                    .stderr(Stdio::from(log));
                if let Ok(mut child) = cmd.spawn() {
                    std::thread::spawn(move || child.wait());
                }
            }
        });
        Ok(Bastion {
            dir,
            port,
            user,
            connections,
            stop,
        })
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The user to log in as (the one running the tests).
    pub fn user(&self) -> &str {
        &self.user
    }
    /// The authorized user's private key (OpenSSH format, no passphrase).
    pub fn private_key(&self) -> PathBuf {
        self.dir.path().join("user_ed25519")
    }
    /// The host's public key as `type base64` (what `ssh_tunnel.host_key` pins).
    pub fn host_key(&self) -> String {
        let line = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .expect("read host key");
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// A new key pair, authorized when `authorize`, its private key protected
    /// by `passphrase` (empty: none). Returns the private key's path.
    pub fn new_user_key(&self, passphrase: &str, authorize: bool) -> PathBuf {
        let n = crate::DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("user_{n}"));
        keygen(&path, passphrase, "extra-user").unwrap_or_else(|e| panic!("{e}"));
        if authorize {
            let public = std::fs::read_to_string(format!("{}.pub", path.display()))
                .expect("read public key");
            let mut keys =
                std::fs::read_to_string(self.dir.path().join("authorized_keys")).unwrap();
            keys.push_str(&public);
            std::fs::write(self.dir.path().join("authorized_keys"), keys).unwrap();
        }
        path
    }
    /// SSH connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    /// sshd's log (VERBOSE), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A private directory removed on drop (pg-testkit has no tempfile dependency).
mod tempdir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub(super) struct Dir(PathBuf);

    impl Dir {
        pub(super) fn new(parent: &Path, prefix: &str) -> Result<Dir, String> {
            let n = crate::DB_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = parent.join(format!("{prefix}-{n}"));
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| e.to_string())?;
            Ok(Dir(path))
        }
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
