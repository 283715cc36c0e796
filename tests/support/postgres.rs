//! A local Postgres for the store tests (`tests/postgres/postgres.sh`):
//! one shared instance per test run, or a dedicated one a test may kill.
//! When it cannot start, the test fails with the reason.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub struct Postgres {
    pub url: String,
    dir: String,
    port: u16,
}

impl Postgres {
    /// The instance shared by the tests of this run.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| Postgres::up("/var/tmp/hookrelay-postgres", 25432))
    }

    /// An instance of its own (its own directory and port), for a test that
    /// stops or kills it.
    pub fn dedicated(name: &str, port: u16) -> Postgres {
        Postgres::up(&format!("/var/tmp/hookrelay-postgres-{name}"), port)
    }

    /// An instance of its own that also listens on `ip` (where a node's pods
    /// reach this machine), with password sign-in there.
    pub fn listening_on(name: &str, port: u16, ip: &str) -> Postgres {
        let dir = format!("/var/tmp/hookrelay-postgres-{name}");
        let out = script_env(&dir, port, "up", &[("HOOKRELAY_POSTGRES_LISTEN", ip)]);
        Self::from_output(out, &dir, port)
    }

    /// An instance of its own that also accepts TLS with the certificate
    /// and key (PEM) given.
    pub fn with_tls(name: &str, port: u16, cert: &str, key: &str) -> Postgres {
        let dir = format!("/var/tmp/hookrelay-postgres-{name}");
        let certs = format!("{dir}-certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(format!("{certs}/server.crt"), cert).unwrap();
        std::fs::write(format!("{certs}/server.key"), key).unwrap();
        // A running instance would keep its old certificate: start afresh.
        script(&dir, port, "down");
        let out = script_env(&dir, port, "up", &[("HOOKRELAY_POSTGRES_TLS", &certs)]);
        Self::from_output(out, &dir, port)
    }

    fn up(dir: &str, port: u16) -> Postgres {
        let out = script(dir, port, "up");
        Self::from_output(out, dir, port)
    }

    fn from_output(out: std::process::Output, dir: &str, port: u16) -> Postgres {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the local Postgres did not start ({}); its output is above",
            out.status
        );
        let url = stdout
            .lines()
            .last()
            .expect("postgres.sh up prints the URL")
            .trim()
            .to_string();
        Postgres {
            url,
            dir: dir.to_string(),
            port,
        }
    }

    /// SIGKILLs the server and its backends.
    pub fn kill(&self) {
        let out = script(&self.dir, self.port, "kill");
        assert!(out.status.success(), "postgres.sh kill failed");
    }

    /// Starts it again after `kill` (crash recovery runs).
    pub fn start(&self) {
        let again = Postgres::up(&self.dir, self.port);
        assert_eq!(again.url, self.url);
    }

    /// Stalls the server and its backends (SIGSTOP) until `resume`.
    pub fn pause(&self) {
        let out = script(&self.dir, self.port, "pause");
        assert!(out.status.success(), "postgres.sh pause failed");
    }

    pub fn resume(&self) {
        let out = script(&self.dir, self.port, "resume");
        assert!(out.status.success(), "postgres.sh resume failed");
    }

    pub fn stop(&self) {
        script(&self.dir, self.port, "down");
    }

    /// The server's processes: the postmaster and its children (backends
    /// and workers), e.g. to cap them together.
    pub fn pids(&self) -> Vec<u32> {
        let pidfile = format!("{}/data/postmaster.pid", self.dir);
        let postmaster: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no postmaster pid in {pidfile}"));
        let parent_of = |pid: u32| -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
        };
        let children = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| parent_of(*pid) == Some(postmaster));
        std::iter::once(postmaster).chain(children).collect()
    }

    /// A connection for checking what the store holds.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test Postgres: {e}"));
        tokio::spawn(connection);
        client
    }
}

fn script(dir: &str, port: u16, command: &str) -> std::process::Output {
    script_env(dir, port, command, &[])
}

fn script_env(dir: &str, port: u16, command: &str, env: &[(&str, &str)]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postgres/postgres.sh");
    let mut command_line = Command::new("bash");
    command_line
        .arg(&script)
        .arg(command)
        .env("HOOKRELAY_POSTGRES_DIR", dir)
        .env("HOOKRELAY_POSTGRES_PORT", port.to_string());
    command_line.envs(env.iter().copied());
    command_line
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}
