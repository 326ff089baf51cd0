//! A real PostgreSQL for tests and benches: `DATABASE_URL` when set (read at run time), else a
//! throwaway server this process starts once and a watchdog removes when the process exits.
//! Each caller gets its own schema, so tests never see each other's rows.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tower_budget::store::postgres::deadpool_postgres::Pool;
use tower_budget::store::postgres::{migrate, PoolOptions};

/// The server's URL (an admin connection to its default database).
pub fn database_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start_throwaway_server(),
    })
    .clone()
}

/// A fresh, empty schema on the test server.
pub async fn fresh_schema() -> String {
    fresh_schema_on(&database_url()).await
}

/// A fresh, empty schema on the server at `url`.
pub async fn fresh_schema_on(url: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    );
    admin_execute_on(url, &format!("CREATE SCHEMA {schema}")).await;
    schema
}

/// Runs `sql` on an admin connection.
pub async fn admin_execute(sql: &str) {
    admin_execute_on(&database_url(), sql).await
}

/// The single `bigint` that `sql` returns, on an admin connection to the test server.
pub async fn admin_query_i64(sql: &str) -> i64 {
    admin_query_i64_on(&database_url(), sql).await
}

/// The single `bigint` that `sql` returns, on an admin connection to the server at `url`.
pub async fn admin_query_i64_on(url: &str, sql: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let conn = tokio::spawn(conn);
    let n = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    drop(client);
    let _ = conn.await;
    n
}

/// Runs `sql` on an admin connection to the server at `url`.
pub async fn admin_execute_on(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = conn.await;
}

/// A pool on a schema of its own, not migrated.
pub async fn pool_in(schema: &str, max_size: usize) -> Pool {
    let mut options = PoolOptions::default().with_schema(schema);
    options.max_size = max_size;
    options.build(&database_url()).expect("pool")
}

/// A pool on a fresh, migrated schema.
pub async fn migrated_pool() -> Pool {
    let pool = pool_in(&fresh_schema().await, 16).await;
    migrate(&pool).await.expect("migrate");
    pool
}

fn start_throwaway_server() -> String {
    let server = Server::start();
    let url = server.url();
    // The watchdog removes it when this process exits.
    std::mem::forget(server);
    url
}

/// A PostgreSQL server of this process's own, on a free loopback port: stopped and removed by a
/// watchdog when the process exits; it can be stopped and started again meanwhile.
pub struct Server {
    bindir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    options: String,
    as_root: bool,
    pub port: u16,
}

impl Server {
    pub fn start() -> Server {
        let bindir = find_bindir().expect(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: set DATABASE_URL, or run \
             scripts/test, which installs them",
        );
        let as_root = run_output(Command::new("id").arg("-u")).trim() == "0";
        let dir = std::env::temp_dir().join(format!(
            "tower-budget-pg-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        if as_root {
            // PostgreSQL refuses to run as root: hand the directory to the `postgres` user.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir));
        }
        let data = dir.join("data");
        let pg_ctl = bindir.join("pg_ctl");
        run(as_server_user(as_root, &bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]));
        let port = free_port();
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            dir.display()
        );
        // Tests need no durability, and skipping fsync makes them faster. Benches set PG_DURABLE=1
        // to measure the server's default, crash-safe settings.
        if std::env::var_os("PG_DURABLE").is_none() {
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off";
        }
        let server = Server {
            bindir,
            data: data.clone(),
            log: dir.join("server.log"),
            options,
            as_root,
            port,
        };
        server.start_again();
        // The server outlives a test binary unless something stops it: a watchdog polls for this
        // process and then stops the server and removes its files. It checks /proc rather than
        // `kill -0`, which an unprivileged watchdog cannot send to a root test process.
        let watchdog = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; '{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = data.display(),
            dir = dir.display(),
        );
        let mut sh = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &watchdog]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &watchdog]);
            c
        };
        use std::os::unix::process::CommandExt;
        sh.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // Deliberately not waited for: it must outlive this process to clean up after it.
        std::mem::forget(sh.spawn().expect("start the server watchdog"));
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Stops the server (fast shutdown: sessions are disconnected).
    pub fn stop(&self) {
        run(as_server_user(self.as_root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]));
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn start_again(&self) {
        run(as_server_user(self.as_root, &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &self.options, "start"]));
    }
}

fn as_server_user(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// `initdb` on PATH, or the newest Debian server under /usr/lib/postgresql/<version>/bin.
fn find_bindir() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| d.join("initdb").is_file()) {
            // Follow a symlink on PATH to the real bindir, where pg_ctl and postgres sit too.
            let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
            return real.parent().map(Path::to_path_buf);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A port nothing listens on now (the OS's pick; another process may take it before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Appends `events` ledger entries of 7 cents each for `workspace` (registered if needed),
/// spread evenly over the `span_secs` before `end`, as heartbeats would have left them.
/// Bulk SQL: far faster than heartbeats for building large ledgers.
pub async fn seed_ledger(
    client: &tokio_postgres::Client,
    workspace: &str,
    events: i64,
    span_secs: f64,
    end: chrono::DateTime<chrono::Utc>,
) {
    client
        .execute(
            "INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&workspace],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO workspace_spend_events (workspace_id, occurred_at, delta_cents, total_cents)
             SELECT $1, $2::TIMESTAMPTZ - ($3 - i) * ($4::FLOAT8 / $3) * interval '1 second', 7, 7 * i
             FROM generate_series(1::BIGINT, $3) AS i",
            &[&workspace, &end, &events, &span_secs],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE workspaces SET spend_total_cents = 7 * $2::BIGINT, spend_last_at = $3 WHERE id = $1",
            &[&workspace, &events, &end],
        )
        .await
        .unwrap();
}
