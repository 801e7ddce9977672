//! Servers that speak TLS and ask for passwords, for the secure-connection
//! tests (`tls.rs`, `secrets.rs`): a test CA made with the `openssl` tool, a
//! tansu broker behind `stunnel` (Debian package `stunnel4`), optionally
//! with a SCRAM user, a PostgreSQL server that accepts only TLS connections
//! with a password, and the `chronolog` binary run against them with all its
//! output kept for inspection.

use std::ffi::OsStr;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    BIN, ChildProcess, DEADLINE, as_postgres_user, is_root, run, unique, wait_for_exit,
};

/// A directory of its own, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on (yet).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until `port` accepts connections; fails at once if `process`
/// exits first, naming the log to read.
fn wait_for_port(port: u16, process: &mut ChildProcess, what: &str, log: &Path) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = process.child().try_wait().expect("child status") {
            panic!(
                "{what} exited ({status}) during start-up: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path).expect("log file").into()
}

/// Runs the `openssl` tool in `dir`; fails the test if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl tool runs (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate authority of one test, made with the `openssl` tool.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// A new CA whose files are `<name>.pem` and `<name>.key` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=chronolog test CA {name}"),
            ],
        );
        Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The CA's certificate (PEM), what clients trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A server certificate signed by this CA for `san` (`IP:127.0.0.1`,
    /// `DNS:localhost`): (certificate, key), as PEM files in the CA's
    /// directory.
    pub fn issue(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        std::fs::write(
            self.dir.join(format!("{name}.ext")),
            format!("subjectAltName={san}\n"),
        )
        .expect("extension file");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{}.pem", self.name),
                "-CAkey",
                &format!("{}.key", self.name),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// A tansu broker reachable only through TLS: `stunnel` terminates TLS on
/// the port tansu advertises and forwards to tansu's own port.
pub struct TlsBroker {
    /// `KAFKA_BROKERS` for chronolog: the TLS port.
    pub brokers: String,
    /// The CA that signed the broker's certificate.
    pub ca: TestCa,
    stunnel: ChildProcess,
    tansu: ChildProcess,
    dir: TempDir,
}

impl TlsBroker {
    /// Starts tansu and stunnel. With `user` (name, password), tansu
    /// requires SASL and knows that SCRAM-SHA-512 user.
    pub fn start(user: Option<(&str, &str)>) -> Self {
        let dir = TempDir::new("chronolog-tls-broker");
        let ca = TestCa::new(dir.path(), "ca");
        let (cert, key) = ca.issue("broker", "IP:127.0.0.1");
        let (plain, tls) = (free_port(), free_port());
        let mut tansu = start_tansu(dir.path(), plain, tls, false);
        if let Some((name, password)) = user {
            // Users are created through a broker that does not ask for
            // one yet, then the broker restarts asking.
            run({
                let mut create = Command::new("tansu");
                create.args([
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{plain}"),
                    "--mechanism",
                    "scram512",
                    name,
                    password,
                ]);
                create
            });
            tansu.kill();
            tansu = start_tansu(dir.path(), plain, tls, true);
        }
        let config = dir.path().join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        )
        .expect("stunnel config");
        let log = dir.path().join("stunnel.log");
        let mut stunnel = ChildProcess::new(
            Command::new("stunnel")
                .arg(&config)
                .stdout(log_file(&log))
                .stderr(log_file(&dir.path().join("stunnel.err")))
                .spawn()
                .expect("stunnel runs (Debian package stunnel4)"),
        );
        wait_for_port(tls, &mut stunnel, "stunnel", &log);
        Self {
            brokers: format!("127.0.0.1:{tls}"),
            ca,
            stunnel,
            tansu,
            dir,
        }
    }

    /// A directory that lives as long as the broker, for other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        self.stunnel.kill();
        self.tansu.kill();
    }
}

/// tansu on `plain`, advertising `advertised` (stunnel's port), its SQLite
/// file in `dir`.
fn start_tansu(dir: &Path, plain: u16, advertised: u16, authentication: bool) -> ChildProcess {
    let log = dir.join("tansu.log");
    let mut command = Command::new("tansu");
    command
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{plain}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "sqlite://tansu.db",
        ])
        .stdout(log_file(&log))
        .stderr(Stdio::null());
    if authentication {
        command.arg("--authentication");
    }
    let mut tansu = ChildProcess::new(command.spawn().expect("tansu runs"));
    wait_for_port(plain, &mut tansu, "tansu", &log);
    tansu
}

/// A PostgreSQL server of one test that accepts only TLS connections
/// authenticated by password (`hostssl … scram-sha-256`,
/// `hostnossl … reject`); its certificate names `localhost` only.
pub struct TlsPostgres {
    /// The CA that signed the server's certificate.
    pub ca: TestCa,
    /// The password of the `postgres` user.
    pub password: String,
    port: u16,
    dir: TempDir,
}

impl TlsPostgres {
    /// initdb, certificate, `pg_hba.conf`, start on a free port.
    pub fn start() -> Self {
        let dir = TempDir::new("chronolog-tls-pg");
        let ca = TestCa::new(dir.path(), "ca");
        let (cert, key) = ca.issue("server", "DNS:localhost");
        let password = unique("pg-secret");
        std::fs::write(dir.path().join("pwfile"), &password).expect("password file");
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:", dir.path().to_str().expect("utf-8")]);
            run(chown);
        }
        // PostgreSQL refuses a key others can read.
        let mut chmod = Command::new("chmod");
        chmod.args(["600", key.to_str().expect("utf-8")]);
        run(chmod);
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8");
        let pwfile = format!("--pwfile={}", dir.path().join("pwfile").display());
        run(as_postgres_user(
            "initdb",
            &[
                "-D",
                data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &pwfile,
                "--no-instructions",
            ],
        ));
        std::fs::write(
            Path::new(data).join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all 0.0.0.0/0 reject\n",
        )
        .expect("pg_hba.conf");
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.path().display(),
            cert.display(),
            key.display()
        );
        let log = dir.path().join("postgres.log");
        run(as_postgres_user(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "start",
                "-o",
                &options,
            ],
        ));
        Self {
            ca,
            password,
            port,
            dir,
        }
    }

    /// URL of the `postgres` database on `host` with the user's password
    /// and the given parameters (`sslmode=...&sslrootcert=...`).
    pub fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{}/postgres?{params}",
            self.password, self.port
        )
    }

    /// A directory that lives as long as the server, for other files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server at once.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres_user(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .output();
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `chronolog` binary, started with a clean environment and JSON logs;
/// stdout and stderr are kept whole.
pub struct Chronolog {
    process: ChildProcess,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn keep(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    text
}

impl Chronolog {
    /// `chronolog ARGS` with only `env` (plus JSON logs at `info`) in its
    /// environment: nothing of the test's own environment leaks in.
    pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(args: &[&str], env: &[(K, V)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = keep(child.stdout.take().expect("piped"));
        let stderr = keep(child.stderr.take().expect("piped"));
        Self {
            process: ChildProcess::new(child),
            stdout,
            stderr,
        }
    }

    /// `chronolog serve` with every role, its APIs on free ports.
    pub fn serve<K: AsRef<OsStr>, V: AsRef<OsStr>>(env: &[(K, V)]) -> Self {
        Self::start(
            &[
                "serve",
                "--command-addr",
                "127.0.0.1:0",
                "--query-addr",
                "127.0.0.1:0",
            ],
            env,
        )
    }

    /// Everything it wrote so far, stdout then stderr.
    pub fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `http://ADDR` of its `command` or `query` server, once it listens;
    /// fails at once if the process exits instead.
    pub async fn url(&mut self, server: &str) -> String {
        let started = Instant::now();
        loop {
            let addr = self.stdout.lock().unwrap().lines().find_map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).ok()?;
                (line["message"] == "listening" && line["server"] == server)
                    .then(|| line["addr"].as_str().unwrap_or_default().to_owned())
            });
            if let Some(addr) = addr {
                return format!("http://{addr}");
            }
            if let Some(status) = self.process.child().try_wait().expect("status") {
                panic!(
                    "chronolog exited ({status}) before listening:\n{}",
                    self.output()
                );
            }
            assert!(
                started.elapsed() < DEADLINE,
                "chronolog's {server} server did not listen:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for it to exit by itself.
    pub async fn exit(&mut self) -> ExitStatus {
        let status = wait_for_exit(self.process.child()).await;
        self.wait_for_output().await;
        status
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.process.child().id().to_string();
        run({
            let mut kill = Command::new("kill");
            kill.args(["-TERM", &pid]);
            kill
        });
        self.exit().await
    }

    /// The reader threads end at end of file, shortly after the exit.
    async fn wait_for_output(&self) {
        let started = Instant::now();
        while Arc::strong_count(&self.stdout) + Arc::strong_count(&self.stderr) > 2 {
            assert!(started.elapsed() < DEADLINE, "output not closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
