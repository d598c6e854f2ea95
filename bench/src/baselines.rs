//! The baselines: `redis-benchmark` running EVALSHA of the product's own reserve script (the
//! physical limit of one Redis), and `pgbench` doing reservations with PostgreSQL row locks (what
//! users would build instead), with synchronous commit on and off.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};

/// What an external benchmark reported.
#[derive(Debug, Clone, Default)]
pub struct External {
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub ops: u64,
}

fn run(program: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("{program} is needed (Debian: redis-tools / postgresql-contrib)"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Keys of one SKU group under the bench prefix, as the engine names them.
fn sku_keys(sku: &str) -> Vec<String> {
    ["cells", "hq", "hx", "cq"].iter().map(|k| format!("bench:im:{{{sku}}}:{k}")).collect()
}

/// Loads the reserve script and stocks the SKUs the EVALSHA runs use; returns its SHA.
pub fn prepare_redis(port: u16, random_skus: usize) -> anyhow::Result<String> {
    let source = mesh_counters::reserve_script_source();
    let sha = run("redis-cli", &["-p".into(), port.to_string(), "SCRIPT".into(), "LOAD".into(), source], &[])?
        .trim()
        .to_owned();
    // HOT and R0..R{n-1} at L1 with practically unlimited stock.
    // redis-benchmark writes __rand_int__ as a 12-digit zero-padded number.
    let stock = "for i = 0, tonumber(ARGV[1]) - 1 do redis.call('HSET', 'bench:im:{R' .. string.format('%012d', i) .. '}:cells', 'oh:L1', '1000000000', 'v:L1', '1') end \
                 redis.call('HSET', 'bench:im:{HOT}:cells', 'oh:L1', '1000000000000', 'v:L1', '1') return 1";
    run(
        "redis-cli",
        &["-p".into(), port.to_string(), "EVAL".into(), stock.into(), "0".into(), random_skus.to_string()],
        &[],
    )?;
    Ok(sha)
}

/// Removes every key the EVALSHA runs made.
pub fn clean_redis(port: u16) -> anyhow::Result<()> {
    let script = "local c = '0' repeat local r = redis.call('SCAN', c, 'MATCH', 'bench:*', 'COUNT', 10000) c = r[1] \
                  for _, k in ipairs(r[2]) do redis.call('UNLINK', k) end until c == '0' return 1";
    run("redis-cli", &["-p".into(), port.to_string(), "EVAL".into(), script.into(), "0".into()], &[])?;
    Ok(())
}

/// `redis-benchmark` EVALSHA of the reserve script: `lines` lines on the hot SKU or on random ones.
/// Random SKUs use `__rand_int__` in the key names (redis-benchmark draws each occurrence), so a
/// line's counters and holds may name different random SKUs: the same work per call as the product.
pub fn evalsha(
    port: u16,
    sha: &str,
    lines: usize,
    hot: bool,
    concurrency: usize,
    requests: u64,
    random_skus: usize,
) -> anyhow::Result<External> {
    let mut args: Vec<String> = vec![
        "-p".into(),
        port.to_string(),
        "-c".into(),
        concurrency.to_string(),
        "-n".into(),
        requests.to_string(),
        "-r".into(),
        random_skus.to_string(),
        "--csv".into(),
        "EVALSHA".into(),
        sha.into(),
        (lines * 4).to_string(),
    ];
    for line in 0..lines {
        let sku = if hot { "HOT".to_owned() } else { "R__rand_int__".to_owned() };
        let _ = line;
        args.extend(sku_keys(&sku));
    }
    // ARGV: reservation id, ttl ms, policy, line count, then (group, location, units) per line.
    args.extend(["b__rand_int__".into(), "600000".into(), "all".into(), lines.to_string()]);
    for line in 0..lines {
        args.extend([(line + 1).to_string(), "L1".into(), "1".into()]);
    }
    let csv = run("redis-benchmark", &args, &[])?;
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = csv.lines().rfind(|l| !l.starts_with("\"test\"")).context("redis-benchmark printed no result")?;
    let cols: Vec<f64> = row.split(',').skip(1).map(|c| c.trim_matches('"').parse().unwrap_or(0.0)).collect();
    Ok(External {
        throughput: cols.first().copied().unwrap_or(0.0),
        p50_ms: cols.get(3).copied().unwrap_or(0.0),
        p99_ms: cols.get(5).copied().unwrap_or(0.0),
        p999_ms: cols.get(6).copied().unwrap_or(0.0), // redis-benchmark's CSV stops at max
        errors: 0,
        ops: requests,
    })
}

/// The PostgreSQL baseline's schema: a counter row per cell, and a table of holds.
pub const PG_SCHEMA: &str = "
DROP TABLE IF EXISTS bench_holds; DROP TABLE IF EXISTS bench_cells;
CREATE TABLE bench_cells (sku text NOT NULL, loc text NOT NULL, on_hand bigint NOT NULL, held bigint NOT NULL DEFAULT 0, PRIMARY KEY (sku, loc));
CREATE TABLE bench_holds (id bigserial PRIMARY KEY, sku text NOT NULL, loc text NOT NULL, units bigint NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX bench_holds_cell ON bench_holds (sku, loc, expires_at);
INSERT INTO bench_cells SELECT 'R' || g, 'L1', 1000000000, 0 FROM generate_series(0, 9999) g;
INSERT INTO bench_cells VALUES ('HOT', 'L1', 1000000000000, 0);
";

/// Hot SKU, one line: lock the counter row, check, bump it, record the hold.
pub const PG_HOT: &str = "BEGIN;
SELECT on_hand - held FROM bench_cells WHERE sku = 'HOT' AND loc = 'L1' FOR UPDATE;
UPDATE bench_cells SET held = held + 1 WHERE sku = 'HOT' AND loc = 'L1' AND on_hand - held >= 1;
INSERT INTO bench_holds (sku, loc, units, expires_at) VALUES ('HOT', 'L1', 1, now() + interval '10 minutes');
COMMIT;
";

/// Random SKUs, three lines: lock the three cells in order, sum their live holds, insert the holds.
pub const PG_RANDOM3: &str = "\\set a random(0, 9999)
\\set b random(0, 9999)
\\set c random(0, 9999)
BEGIN;
SELECT on_hand FROM bench_cells WHERE loc = 'L1' AND sku IN ('R' || :a, 'R' || :b, 'R' || :c) ORDER BY sku FOR UPDATE;
SELECT sku, coalesce(sum(units), 0) FROM bench_holds WHERE loc = 'L1' AND sku IN ('R' || :a, 'R' || :b, 'R' || :c) AND expires_at > now() GROUP BY sku;
INSERT INTO bench_holds (sku, loc, units, expires_at) VALUES ('R' || :a, 'L1', 1, now() + interval '10 minutes'), ('R' || :b, 'L1', 1, now() + interval '10 minutes'), ('R' || :c, 'L1', 1, now() + interval '10 minutes');
COMMIT;
";

/// Runs a pgbench script; `rate` > 0 makes it open loop (`-R`). Latency percentiles come from the
/// per-transaction log.
pub fn pgbench(
    url: &str,
    script: &str,
    concurrency: usize,
    duration: Duration,
    synchronous_commit: bool,
    rate: Option<f64>,
    dir: &Path,
) -> anyhow::Result<External> {
    let script_path = dir.join("script.sql");
    std::fs::write(&script_path, script)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pgb")) {
            std::fs::remove_file(path)?;
        }
    }
    let prefix = dir.join("pgb");
    let mut args: Vec<String> = vec![
        "-n".into(),
        "-M".into(),
        "prepared".into(),
        "-c".into(),
        concurrency.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        duration.as_secs().max(1).to_string(),
        "-f".into(),
        script_path.display().to_string(),
        "--log".into(),
        format!("--log-prefix={}", prefix.display()),
    ];
    if let Some(rate) = rate {
        args.extend(["-R".into(), format!("{rate:.0}")]);
    }
    args.push(url.into());
    let options = if synchronous_commit { "-c synchronous_commit=on" } else { "-c synchronous_commit=off" };
    let out = run("pgbench", &args, &[("PGOPTIONS", options)])?;
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .context("pgbench printed no tps")?;
    let failed = out
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pgb")) {
            for line in std::fs::read_to_string(&path)?.lines() {
                // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
                let fields: Vec<&str> = line.split_whitespace().collect();
                let latency: u64 = fields.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
                let lag: u64 = fields.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
                latencies.push(latency + lag);
            }
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        if latencies.is_empty() { 0.0 } else { latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0 }
    };
    Ok(External {
        throughput: tps,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        errors: failed,
        ops: latencies.len() as u64,
    })
}

/// The two durable writes of one product Reserve on their own (the claim with its line, then the
/// HELD record with its history row), as the reservation store issues them: what the durable
/// record alone costs, to show how much of Reserve it is.
pub const PG_RECORD_ONLY: &str = "\\set r random(1, 2000000000)
WITH r AS (INSERT INTO reservation_reservations (reservation_id, body_hash, order_id, channel_id, status, ttl_ms, expires_at_ms, released_units, detail, created_at_ms, updated_at_ms, policy, hold_limit_ms) VALUES ('pgb-' || :client_id || '-' || :r, 'h', '', '', 0, 600000, 0, 0, '', 0, 0, 1, 0) ON CONFLICT DO NOTHING RETURNING reservation_id) INSERT INTO reservation_lines (reservation_id, sku, location_id, position, units, reserved_units, released_units, released) SELECT r.reservation_id, 'U1', 'L1', 0, 1, 0, 0, FALSE FROM r;
WITH r AS (UPDATE reservation_reservations SET status = 1, updated_at_ms = 1, expires_at_ms = 2, hold_limit_ms = 3 WHERE reservation_id = 'pgb-' || :client_id || '-' || :r AND status = 0 RETURNING reservation_id), l AS (UPDATE reservation_lines AS t SET reserved_units = 1 FROM r WHERE t.reservation_id = r.reservation_id RETURNING 1) INSERT INTO reservation_history (reservation_id, status, at_ms, reason) SELECT reservation_id, 1, 1, 'held' FROM r;
";

/// `h2load` against the ceiling server: unary gRPC health checks (an empty request, a 5-byte gRPC
/// frame) over `concurrency` connections, one stream each. h2load reports the mean latency only, so
/// p50/p99 stay 0 for this case; it cross-checks the ceiling the Rust load generator measured.
pub fn h2load_ceiling(
    h2load: &Path,
    port: u16,
    concurrency: usize,
    requests: u64,
    dir: &Path,
) -> anyhow::Result<External> {
    let body = dir.join("grpc-empty.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 0])?;
    let args: Vec<String> = vec![
        "-n".into(),
        requests.to_string(),
        "-c".into(),
        concurrency.to_string(),
        "-m".into(),
        "1".into(),
        "-d".into(),
        body.display().to_string(),
        "-H".into(),
        "content-type: application/grpc".into(),
        "-H".into(),
        "te: trailers".into(),
        format!("http://127.0.0.1:{port}/grpc.health.v1.Health/Check"),
    ];
    let out = run(&h2load.display().to_string(), &args, &[])?;
    // "finished in 1.02s, 48834.81 req/s, 2.48MB/s"
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("h2load printed no req/s")?;
    // "requests: 100000 total, 100000 started, 100000 done, 100000 succeeded, 0 failed, 0 errored, 0 timeout"
    let failed = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(',').find(|p| p.contains("failed")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // "time for request:   123us   4.56ms   789us   ..." (min, max, mean, sd)
    let mean_ms = out
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().nth(2))
        .map(|v| {
            if let Some(us) = v.strip_suffix("us") {
                us.parse::<f64>().unwrap_or(0.0) / 1000.0
            } else if let Some(ms) = v.strip_suffix("ms") {
                ms.parse::<f64>().unwrap_or(0.0)
            } else {
                v.trim_end_matches('s').parse::<f64>().unwrap_or(0.0) * 1000.0
            }
        })
        .unwrap_or(0.0);
    Ok(External { throughput: rps, p50_ms: mean_ms, p99_ms: 0.0, p999_ms: 0.0, errors: failed, ops: requests })
}
