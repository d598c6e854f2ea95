//! The Redis counter engine: every change is one Lua script (files in `lua/`, each prefixed with
//! `lua/prelude.lua`) run atomically on the server with the server's clock. Keys of one SKU share
//! the hash tag `{sku}`, so one SKU's keys live in one cluster slot; a script gets 4 keys per SKU.
//! Every call is EVALSHA; on NOSCRIPT the script is loaded (on a cluster SCRIPT LOAD goes to every
//! primary) and sent again, which is safe because NOSCRIPT means it never ran. So a restart,
//! `SCRIPT FLUSH`, a failover or a moved slot is transparent, and each reload is counted in
//! `inventory_mesh_script_reloads_total{script}` ([`crate::metrics`]).
//!
//! On standalone Redis a multi-SKU request is one script. On Redis Cluster the SKUs are grouped by
//! slot ([`key_slot`]) and each group is one script, in slot order; a reserve whose later group
//! fails releases the groups it already held before it answers, and a confirm that finds a group's
//! hold missing gives back what it confirmed in the others. What a crash between groups leaves is
//! repaired by the reservation sweeper (the durable claim names every cell).
use std::sync::LazyLock;

use redis::{
    Cmd, Pipeline, RedisFuture, Script, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
};

use crate::{
    Cell, CellCounters, CellHold, CellUnits, ConfirmOutcome, CounterError, CounterResult, Entry, ExtendOutcome,
    HoldState, PhysicalChange, PhysicalOutcome, ReleasePart, Released, ReserveOutcome, ReservePolicy, Shortage,
    SkuSnapshot, unique_skus,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// One Lua script with the name its metrics carry.
struct LuaScript {
    name: &'static str,
    script: Script,
}

fn script(name: &'static str, body: &str) -> LuaScript {
    LuaScript { name, script: Script::new(&format!("{PRELUDE}\n{body}")) }
}

static RESERVE: LazyLock<LuaScript> = LazyLock::new(|| script("reserve", include_str!("lua/reserve.lua")));
static CONFIRM: LazyLock<LuaScript> = LazyLock::new(|| script("confirm", include_str!("lua/confirm.lua")));
static RELEASE: LazyLock<LuaScript> = LazyLock::new(|| script("release", include_str!("lua/release.lua")));
static EXTEND: LazyLock<LuaScript> = LazyLock::new(|| script("extend", include_str!("lua/extend.lua")));
static HOLD_STATE: LazyLock<LuaScript> = LazyLock::new(|| script("hold_state", include_str!("lua/hold_state.lua")));
static PHYSICAL: LazyLock<LuaScript> = LazyLock::new(|| script("physical", include_str!("lua/physical.lua")));
static SET_SAFETY: LazyLock<LuaScript> = LazyLock::new(|| script("set_safety", include_str!("lua/set_safety.lua")));
static REHOLD: LazyLock<LuaScript> = LazyLock::new(|| script("rehold", include_str!("lua/rehold.lua")));
static RESTORE: LazyLock<LuaScript> = LazyLock::new(|| script("restore", include_str!("lua/restore.lua")));
static SNAPSHOT: LazyLock<LuaScript> = LazyLock::new(|| script("snapshot", include_str!("lua/snapshot.lua")));

/// The names of every script (the metrics show a zero series for each from the start).
fn script_names() -> [&'static str; 10] {
    [&RESERVE, &CONFIRM, &RELEASE, &EXTEND, &HOLD_STATE, &PHYSICAL, &SET_SAFETY, &REHOLD, &RESTORE, &SNAPSHOT]
        .map(|script: &LazyLock<LuaScript>| script.name)
}

/// The source of the reserve script as Redis runs it (the benchmark loads it to measure EVALSHA).
pub fn reserve_script_source() -> String {
    format!("{PRELUDE}\n{}", include_str!("lua/reserve.lua"))
}

/// One connection to standalone Redis or to a cluster; both reconnect by themselves.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Counters in Redis (standalone or cluster), under a key prefix (tests use a fresh prefix each).
#[derive(Clone)]
pub struct RedisEngine {
    connection: Connection,
    prefix: String,
}

/// The keys of one SKU group, in the order the scripts expect.
fn sku_keys(prefix: &str, sku: &str) -> [String; 4] {
    [
        format!("{prefix}im:{{{sku}}}:cells"),
        format!("{prefix}im:{{{sku}}}:hq"),
        format!("{prefix}im:{{{sku}}}:hx"),
        format!("{prefix}im:{{{sku}}}:cq"),
    ]
}

/// The Redis Cluster slot of a SKU's keys: CRC16 (XMODEM) of its hash tag, mod 16384.
pub fn key_slot(sku: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in sku.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc & 0x3fff
}

fn int(values: &[String], index: usize) -> CounterResult<i64> {
    values
        .get(index)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| CounterError::Protocol(format!("expected an integer at {index} in {values:?}")))
}

fn text(values: &[String], index: usize) -> CounterResult<String> {
    values.get(index).cloned().ok_or_else(|| CounterError::Protocol(format!("missing value at {index}")))
}

/// One call of a script: its keys and arguments, sent as EVALSHA.
struct Invocation<'a> {
    script: &'a LuaScript,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    /// Adds one argument (ARGV[i]).
    fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn evalsha(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.script.get_hash()).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key);
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }

    /// EVALSHA; on NOSCRIPT (the script never ran) the script is loaded, the reload counted, and
    /// the call sent once more.
    async fn invoke(&self, connection: &mut Connection) -> redis::RedisResult<Vec<String>> {
        let cmd = self.evalsha();
        match cmd.query_async(connection).await {
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                crate::metrics::script_reloaded(self.script.name);
                tracing::info!(script = self.script.name, "counter store had no copy of the script; loading it");
                self.script.script.load_async(connection).await?;
                cmd.query_async(connection).await
            }
            other => other,
        }
    }
}

impl RedisEngine {
    /// Connects to standalone Redis at `url` (retrying inside the connection manager) with every
    /// key under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> CounterResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)))
            // Fail calls fast while Redis is away (the next call tries again) instead of queueing
            // them behind a long reconnect backoff.
            .set_number_of_retries(1)
            .set_max_delay(std::time::Duration::from_millis(200));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        crate::metrics::init(&script_names());
        Ok(Self { connection: Connection::Standalone(connection), prefix: prefix.to_owned() })
    }

    /// Connects to the Redis Cluster that `url` (any one node) belongs to; the client discovers
    /// the other nodes and follows MOVED/ASK redirections and failovers.
    pub async fn connect_cluster(url: &str, prefix: &str) -> CounterResult<Self> {
        let client = redis::cluster::ClusterClientBuilder::new(vec![url])
            .connection_timeout(std::time::Duration::from_secs(1))
            .response_timeout(std::time::Duration::from_secs(2))
            .retries(3)
            .build()?;
        let connection = client.get_async_connection().await?;
        crate::metrics::init(&script_names());
        Ok(Self { connection: Connection::Cluster(connection), prefix: prefix.to_owned() })
    }

    /// Tells whether this engine talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    /// The prefix every key of this engine starts with.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of the counters hash of `sku` (tests use it to inject faults).
    pub fn cells_key(&self, sku: &str) -> String {
        sku_keys(&self.prefix, sku)[0].clone()
    }

    /// The name of the key that lists every SKU with counters.
    pub fn skus_key(&self) -> String {
        format!("{}im:skus", self.prefix)
    }

    /// The name of the key that says which durable store these counters were built from.
    pub fn origin_key(&self) -> String {
        format!("{}im:origin", self.prefix)
    }

    /// Runs one command (routed by its first key on a cluster).
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> CounterResult<T> {
        let mut connection = self.connection.clone();
        match cmd.query_async(&mut connection).await {
            Err(error) if never_sent(&error) => {
                cmd.query_async(&mut connection).await.map_err(CounterError::from_redis)
            }
            other => other.map_err(CounterError::from_redis),
        }
    }

    /// Splits SKUs into the groups one script may touch: all of them on standalone Redis, one group
    /// per slot (in slot order) on a cluster.
    fn slot_groups(&self, skus: &[String]) -> Vec<Vec<String>> {
        if !self.is_cluster() {
            return vec![skus.to_vec()];
        }
        let mut groups: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for sku in skus {
            groups.entry(key_slot(sku)).or_default().push(sku.clone());
        }
        groups.into_values().collect()
    }

    /// Builds a script invocation with the key groups of `skus`.
    fn invocation<'a>(&self, script: &'a LuaScript, skus: &[String]) -> Invocation<'a> {
        let mut invocation = Invocation { script, keys: Vec::with_capacity(skus.len() * 4), args: Vec::new() };
        for sku in skus {
            invocation.keys.extend(sku_keys(&self.prefix, sku));
        }
        invocation
    }

    async fn run(&self, invocation: &Invocation<'_>) -> CounterResult<Vec<String>> {
        let mut connection = self.connection.clone();
        match invocation.invoke(&mut connection).await {
            // The connection had closed before the call was written (a restart or failover since
            // the last call): it never reached Redis, so sending it again on a new connection is
            // safe. Any other I/O error may have run the script and is returned as it is.
            Err(error) if never_sent(&error) => {
                tracing::info!(%error, "counter store connection was closed; retrying once on a new one");
                invocation.invoke(&mut connection).await.map_err(CounterError::from_redis)
            }
            other => other.map_err(CounterError::from_redis),
        }
    }

    /// Runs a per-cell script on the cells of one slot group: ARGV = id, extra args, count,
    /// (group, loc)*.
    async fn run_cells(
        &self,
        script: &LuaScript,
        reservation_id: &str,
        extra: &[String],
        cells: &[Cell],
    ) -> CounterResult<Vec<String>> {
        let skus = unique_skus(cells.iter().map(|c| &c.sku));
        let mut invocation = self.invocation(script, &skus);
        invocation.arg(reservation_id);
        for arg in extra {
            invocation.arg(arg);
        }
        invocation.arg(cells.len());
        for cell in cells {
            invocation.arg(group_of(&skus, &cell.sku)).arg(&cell.location);
        }
        self.run(&invocation).await
    }

    /// The cells of each slot group (each group's cells in their given order).
    fn cell_groups(&self, cells: &[Cell]) -> Vec<Vec<Cell>> {
        let skus = unique_skus(cells.iter().map(|c| &c.sku));
        self.slot_groups(&skus)
            .into_iter()
            .map(|group| cells.iter().filter(|c| group.contains(&c.sku)).cloned().collect())
            .collect()
    }

    pub(crate) async fn snapshot(&self, skus: &[String]) -> CounterResult<Vec<SkuSnapshot>> {
        let mut out = Vec::with_capacity(skus.len());
        for group in self.slot_groups(skus) {
            if !group.is_empty() {
                out.extend(self.snapshot_group(&group).await?);
            }
        }
        // Answer in the order asked.
        out.sort_by_key(|s| skus.iter().position(|sku| *sku == s.sku));
        Ok(out)
    }

    async fn snapshot_group(&self, skus: &[String]) -> CounterResult<Vec<SkuSnapshot>> {
        let values = self.run(&self.invocation(&SNAPSHOT, skus)).await?;
        let mut at = 1;
        let mut out = Vec::with_capacity(skus.len());
        for sku in skus {
            let mut snapshot = SkuSnapshot { sku: sku.clone(), ..SkuSnapshot::default() };
            let field_count = int(&values, at)? as usize;
            at += 1;
            let mut cells: std::collections::BTreeMap<String, CellCounters> = Default::default();
            for _ in 0..field_count {
                let field = text(&values, at)?;
                let value = int(&values, at + 1)?;
                at += 2;
                let Some((kind, loc)) = field.split_once(':') else { continue };
                if !matches!(kind, "oh" | "h" | "c" | "s") {
                    continue; // versions and fulfilment records are not counters
                }
                let counters = cells.entry(loc.to_owned()).or_default();
                match kind {
                    "oh" => counters.on_hand = value,
                    "h" => counters.held = value,
                    "c" => counters.committed = value,
                    _ => counters.safety = value,
                }
            }
            snapshot.cells = cells.into_iter().collect();
            let hold_count = int(&values, at)? as usize;
            at += 1;
            for _ in 0..hold_count {
                let (reservation_id, location) = split_member(&text(&values, at)?)?;
                snapshot.holds.push(Entry {
                    reservation_id,
                    location,
                    units: int(&values, at + 1)?,
                    deadline_ms: int(&values, at + 2)?,
                });
                at += 3;
            }
            let commitment_count = int(&values, at)? as usize;
            at += 1;
            for _ in 0..commitment_count {
                let (reservation_id, location) = split_member(&text(&values, at)?)?;
                snapshot.commitments.push(Entry {
                    reservation_id,
                    location,
                    units: int(&values, at + 1)?,
                    deadline_ms: 0,
                });
                at += 2;
            }
            out.push(snapshot);
        }
        Ok(out)
    }

    pub(crate) async fn apply_physical(&self, change: &PhysicalChange) -> CounterResult<PhysicalOutcome> {
        let skus = [change.cell.sku.clone()];
        let mut invocation = self.invocation(&PHYSICAL, &skus);
        let (reservation_id, units) = change.fulfil.clone().unwrap_or_default();
        invocation
            .arg(&change.cell.location)
            .arg(change.on_hand)
            .arg(change.version)
            .arg(reservation_id)
            .arg(units)
            .arg(&change.event_id);
        let values = self.run(&invocation).await?;
        // The SKU index lives outside the SKU's slot; adding to it is idempotent, so it need not be
        // in the same script.
        let _: i64 = self.command(redis::cmd("SADD").arg(self.skus_key()).arg(&change.cell.sku)).await?;
        Ok(PhysicalOutcome { counters: counters_from(&values, 0)?, fulfilled_units: int(&values, 4)? })
    }

    pub(crate) async fn set_safety(&self, cell: &Cell, safety: i64) -> CounterResult<CellCounters> {
        let skus = [cell.sku.clone()];
        let mut invocation = self.invocation(&SET_SAFETY, &skus);
        invocation.arg(&cell.location).arg(safety);
        let values = self.run(&invocation).await?;
        let _: i64 = self.command(redis::cmd("SADD").arg(self.skus_key()).arg(&cell.sku)).await?;
        counters_from(&values, 0)
    }

    pub(crate) async fn reserve(
        &self,
        reservation_id: &str,
        lines: &[CellUnits],
        ttl_ms: u64,
        policy: ReservePolicy,
    ) -> CounterResult<ReserveOutcome> {
        let lines = crate::sum_cells(lines);
        let skus = unique_skus(lines.iter().map(|l| &l.cell.sku));
        let groups = self.slot_groups(&skus);
        let mut held: Vec<CellUnits> = Vec::new();
        let mut expires_at_ms = i64::MAX;
        let mut done: Vec<Vec<Cell>> = Vec::new();
        let mut shortages = Vec::new();
        for group in &groups {
            let group_lines: Vec<CellUnits> = lines.iter().filter(|l| group.contains(&l.cell.sku)).cloned().collect();
            let outcome = match self.reserve_group(reservation_id, group, &group_lines, ttl_ms, policy).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    self.compensate(reservation_id, &done).await;
                    return Err(error);
                }
            };
            match outcome {
                ReserveOutcome::Held { expires_at_ms: deadline, held: part } => {
                    expires_at_ms = expires_at_ms.min(deadline);
                    done.push(group_lines.iter().map(|l| l.cell.clone()).collect());
                    held.extend(part);
                }
                ReserveOutcome::AlreadyExists { expires_at_ms } => {
                    // A previous attempt with this id holds these cells: never hold them twice.
                    self.compensate(reservation_id, &done).await;
                    return Ok(ReserveOutcome::AlreadyExists { expires_at_ms });
                }
                ReserveOutcome::Insufficient { shortages: part } => {
                    if policy == ReservePolicy::AllOrNothing {
                        self.compensate(reservation_id, &done).await;
                        return Ok(ReserveOutcome::Insufficient { shortages: part });
                    }
                    // Partial: this group had nothing at all; its lines are held at 0.
                    held.extend(group_lines.iter().map(|l| CellUnits { cell: l.cell.clone(), units: 0 }));
                    shortages.extend(part);
                }
            }
        }
        if done.is_empty() {
            return Ok(ReserveOutcome::Insufficient { shortages });
        }
        // Answer per cell in the order the lines came.
        held.sort_by_key(|h| lines.iter().position(|l| l.cell == h.cell));
        Ok(ReserveOutcome::Held { expires_at_ms, held })
    }

    /// Gives back the holds a multi-slot reserve made in its earlier groups (best effort: what a
    /// failure here leaves, the sweeper settles from the durable claim, and the TTL bounds it).
    async fn compensate(&self, reservation_id: &str, done: &[Vec<Cell>]) {
        for cells in done {
            let extra = ["hold".to_owned()];
            if let Err(error) = self.run_cells(&RELEASE, reservation_id, &extra, cells).await {
                tracing::warn!(%reservation_id, %error, "could not give back a partial multi-slot hold");
            }
        }
    }

    async fn reserve_group(
        &self,
        reservation_id: &str,
        skus: &[String],
        lines: &[CellUnits],
        ttl_ms: u64,
        policy: ReservePolicy,
    ) -> CounterResult<ReserveOutcome> {
        let mut invocation = self.invocation(&RESERVE, skus);
        let policy_arg = match policy {
            ReservePolicy::AllOrNothing => "all",
            ReservePolicy::Partial => "partial",
        };
        invocation.arg(reservation_id).arg(ttl_ms).arg(policy_arg).arg(lines.len());
        for line in lines {
            invocation.arg(group_of(skus, &line.cell.sku)).arg(&line.cell.location).arg(line.units);
        }
        let values = self.run(&invocation).await?;
        let sku_of = |group: i64| {
            skus.get((group as usize).wrapping_sub(1))
                .cloned()
                .ok_or_else(|| CounterError::Protocol("bad group".into()))
        };
        match int(&values, 0)? {
            1 => {
                let count = int(&values, 2)? as usize;
                let mut held = Vec::with_capacity(count);
                for i in 0..count {
                    let at = 3 + i * 3;
                    held.push(CellUnits {
                        cell: Cell::new(sku_of(int(&values, at)?)?, text(&values, at + 1)?),
                        units: int(&values, at + 2)?,
                    });
                }
                Ok(ReserveOutcome::Held { expires_at_ms: int(&values, 1)?, held })
            }
            2 => Ok(ReserveOutcome::AlreadyExists { expires_at_ms: int(&values, 1)? }),
            _ => {
                let mut shortages = Vec::new();
                for chunk in values[2..].chunks(4) {
                    shortages.push(Shortage {
                        cell: Cell::new(sku_of(int(chunk, 0)?)?, text(chunk, 1)?),
                        requested: int(chunk, 2)?,
                        available: int(chunk, 3)?,
                    });
                }
                Ok(ReserveOutcome::Insufficient { shortages })
            }
        }
    }

    pub(crate) async fn confirm(&self, reservation_id: &str, cells: &[Cell]) -> CounterResult<ConfirmOutcome> {
        if cells.is_empty() {
            let values = self.run_cells(&HOLD_STATE, reservation_id, &[], &[]).await?;
            return Ok(ConfirmOutcome::HoldMissing { now_ms: int(&values, 0)? });
        }
        let groups = self.cell_groups(cells);
        // Per confirmed group: its cells and the deadlines their holds had.
        let mut confirmed: Vec<(Vec<Cell>, Vec<i64>)> = Vec::new();
        let mut already = 0;
        let mut now_ms = 0;
        for group in &groups {
            let values = self.run_cells(&CONFIRM, reservation_id, &[], group).await?;
            now_ms = int(&values, 1)?;
            match int(&values, 0)? {
                1 => {
                    let deadlines = (0..group.len()).map(|i| int(&values, 2 + i)).collect::<CounterResult<Vec<_>>>()?;
                    confirmed.push((group.clone(), deadlines));
                }
                2 => already += 1,
                _ => {
                    // One slot's hold is gone (expired, released or lost): the reservation cannot
                    // be confirmed, so turn what this call confirmed in the other slots back into
                    // the holds they were (a concurrent release of some lines keeps the rest held).
                    for (cells, deadlines) in &confirmed {
                        self.rehold(reservation_id, cells, deadlines).await?;
                    }
                    return Ok(ConfirmOutcome::HoldMissing { now_ms });
                }
            }
        }
        Ok(if confirmed.is_empty() && already > 0 {
            ConfirmOutcome::AlreadyConfirmed { now_ms }
        } else {
            ConfirmOutcome::Confirmed { now_ms }
        })
    }

    async fn rehold(&self, reservation_id: &str, cells: &[Cell], deadlines: &[i64]) -> CounterResult<()> {
        let skus = unique_skus(cells.iter().map(|c| &c.sku));
        let mut invocation = self.invocation(&REHOLD, &skus);
        invocation.arg(reservation_id).arg(cells.len());
        for (cell, deadline) in cells.iter().zip(deadlines) {
            invocation.arg(group_of(&skus, &cell.sku)).arg(&cell.location).arg(deadline);
        }
        self.run(&invocation).await?;
        Ok(())
    }

    pub(crate) async fn extend(
        &self,
        reservation_id: &str,
        cells: &[Cell],
        ttl_ms: u64,
        cap_ms: i64,
    ) -> CounterResult<ExtendOutcome> {
        if cells.is_empty() {
            let values = self.run_cells(&HOLD_STATE, reservation_id, &[], &[]).await?;
            return Ok(ExtendOutcome::HoldMissing { now_ms: int(&values, 0)? });
        }
        let mut earliest = i64::MAX;
        let mut now_ms = 0;
        for group in self.cell_groups(cells) {
            let extra = [ttl_ms.to_string(), cap_ms.to_string()];
            let values = self.run_cells(&EXTEND, reservation_id, &extra, &group).await?;
            now_ms = int(&values, 2)?;
            if int(&values, 0)? != 1 {
                return Ok(ExtendOutcome::HoldMissing { now_ms });
            }
            earliest = earliest.min(int(&values, 1)?);
        }
        Ok(ExtendOutcome::Extended { expires_at_ms: earliest, now_ms })
    }

    pub(crate) async fn release(
        &self,
        reservation_id: &str,
        part: ReleasePart,
        cells: &[Cell],
    ) -> CounterResult<Released> {
        let mode = match part {
            ReleasePart::Hold => "hold",
            ReleasePart::Commitment => "commitment",
        };
        let mut released = Released { per_cell: vec![0; cells.len()], ..Released::default() };
        for group in self.cell_groups(cells) {
            let values = self.run_cells(&RELEASE, reservation_id, &[mode.to_owned()], &group).await?;
            released.hold_units += int(&values, 0)?;
            released.committed_units += int(&values, 1)?;
            for (i, cell) in group.iter().enumerate() {
                if let Some(index) = cells.iter().position(|c| c == cell) {
                    released.per_cell[index] = int(&values, 3 + i)?;
                }
            }
        }
        Ok(released)
    }

    pub(crate) async fn hold_state(&self, reservation_id: &str, cells: &[Cell]) -> CounterResult<HoldState> {
        let mut state = HoldState { cells: vec![CellHold::default(); cells.len()], now_ms: 0 };
        if cells.is_empty() {
            let values = self.run_cells(&HOLD_STATE, reservation_id, &[], &[]).await?;
            state.now_ms = int(&values, 0)?;
            return Ok(state);
        }
        for group in self.cell_groups(cells) {
            let values = self.run_cells(&HOLD_STATE, reservation_id, &[], &group).await?;
            state.now_ms = int(&values, 0)?;
            for (i, cell) in group.iter().enumerate() {
                let Some(index) = cells.iter().position(|c| c == cell) else { continue };
                let at = 1 + i * 3;
                state.cells[index] = CellHold {
                    held_units: int(&values, at)?,
                    deadline_ms: int(&values, at + 1)?,
                    committed_units: int(&values, at + 2)?,
                };
            }
        }
        Ok(state)
    }

    pub(crate) async fn restore(&self, state: &crate::SkuRestore) -> CounterResult<crate::Restored> {
        let mut invocation = self.invocation(&RESTORE, std::slice::from_ref(&state.sku));
        invocation.arg(state.cells.len());
        for (loc, on_hand, version, safety) in &state.cells {
            invocation.arg(loc).arg(on_hand).arg(version).arg(safety);
        }
        invocation.arg(state.holds.len());
        for hold in &state.holds {
            invocation.arg(&hold.reservation_id).arg(&hold.location).arg(hold.units).arg(hold.deadline_ms);
        }
        invocation.arg(state.commitments.len());
        for commitment in &state.commitments {
            invocation.arg(&commitment.reservation_id).arg(&commitment.location).arg(commitment.units);
        }
        let values = self.run(&invocation).await?;
        let _: i64 = self.command(redis::cmd("SADD").arg(self.skus_key()).arg(&state.sku)).await?;
        Ok(crate::Restored {
            cells_written: int(&values, 0)? as u64,
            holds_added: int(&values, 1)? as u64,
            commitments_added: int(&values, 2)? as u64,
        })
    }

    pub(crate) async fn clear_sku(&self, sku: &str) -> CounterResult<()> {
        let _: i64 = self.command(redis::cmd("DEL").arg(&sku_keys(&self.prefix, sku)[..])).await?;
        let _: i64 = self.command(redis::cmd("SREM").arg(self.skus_key()).arg(sku)).await?;
        Ok(())
    }

    /// Reads the origin marker: which durable store these counters were built from (None: empty
    /// or flushed).
    pub async fn origin(&self) -> CounterResult<Option<String>> {
        self.command(redis::cmd("GET").arg(self.origin_key())).await
    }

    /// Writes the origin marker.
    pub async fn set_origin(&self, origin: &str) -> CounterResult<()> {
        let _: () = self.command(redis::cmd("SET").arg(self.origin_key()).arg(origin)).await?;
        Ok(())
    }

    pub(crate) async fn all_skus(&self) -> CounterResult<Vec<String>> {
        let mut skus: Vec<String> = self.command(redis::cmd("SMEMBERS").arg(self.skus_key())).await?;
        skus.sort();
        Ok(skus)
    }
}

/// Tells whether a call failed because its connection was already closed (the client reports a
/// broken pipe without writing anything).
fn never_sent(error: &redis::RedisError) -> bool {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::BrokenPipe;
        }
        source = e.source();
    }
    error.is_io_error() && error.to_string().contains("broken pipe")
}

fn group_of(skus: &[String], sku: &str) -> usize {
    skus.iter().position(|s| s == sku).map(|i| i + 1).unwrap_or(1)
}

fn split_member(member: &str) -> CounterResult<(String, String)> {
    member
        .split_once('|')
        .map(|(rid, loc)| (rid.to_owned(), loc.to_owned()))
        .ok_or_else(|| CounterError::Protocol(format!("malformed member {member}")))
}

fn counters_from(values: &[String], at: usize) -> CounterResult<CellCounters> {
    Ok(CellCounters {
        on_hand: int(values, at)?,
        held: int(values, at + 1)?,
        committed: int(values, at + 2)?,
        safety: int(values, at + 3)?,
    })
}
