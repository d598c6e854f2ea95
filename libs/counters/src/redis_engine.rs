//! The Redis counter engine: every change is one Lua script (files in `lua/`, each prefixed with
//! `lua/prelude.lua`) run atomically on the server with the server's clock. Keys of one SKU share
//! the hash tag `{sku}`; a request touching several SKUs passes 4 keys per SKU. `redis::Script`
//! sends EVALSHA and falls back to loading the script on NOSCRIPT, so a restart or `SCRIPT FLUSH`
//! is transparent.
use std::sync::LazyLock;

use redis::{Script, aio::ConnectionManager};

use crate::{
    Cell, CellCounters, CellUnits, ConfirmOutcome, CounterError, CounterResult, Entry, HoldState, PhysicalChange,
    PhysicalOutcome, ReleasePart, Released, ReserveOutcome, Shortage, SkuSnapshot, unique_skus,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

static RESERVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/reserve.lua")));
static CONFIRM: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/confirm.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/release.lua")));
static HOLD_STATE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/hold_state.lua")));
static PHYSICAL: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/physical.lua")));
static SET_SAFETY: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/set_safety.lua")));
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/snapshot.lua")));

/// Counters in Redis (standalone), under a key prefix (tests use a fresh prefix each).
#[derive(Clone)]
pub struct RedisEngine {
    connection: ConnectionManager,
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

fn int(values: &[String], index: usize) -> CounterResult<i64> {
    values
        .get(index)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| CounterError::Protocol(format!("expected an integer at {index} in {values:?}")))
}

fn text(values: &[String], index: usize) -> CounterResult<String> {
    values.get(index).cloned().ok_or_else(|| CounterError::Protocol(format!("missing value at {index}")))
}

impl RedisEngine {
    /// Connects to `url` (retrying inside the connection manager) with every key under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> CounterResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { connection, prefix: prefix.to_owned() })
    }

    /// The prefix every key of this engine starts with.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of the counters hash of `sku` (tests use it to inject faults).
    pub fn cells_key(&self, sku: &str) -> String {
        sku_keys(&self.prefix, sku)[0].clone()
    }

    fn skus_key(&self) -> String {
        format!("{}im:skus", self.prefix)
    }

    /// Builds a script invocation with the key groups of `skus`.
    fn invocation<'a>(&self, script: &'a Script, skus: &[String]) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for sku in skus {
            for key in sku_keys(&self.prefix, sku) {
                invocation.key(key);
            }
        }
        invocation
    }

    async fn run(&self, invocation: &redis::ScriptInvocation<'_>) -> CounterResult<Vec<String>> {
        let mut connection = self.connection.clone();
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    /// Runs a per-cell script (confirm, release, hold state): ARGV = id, [mode], count, (group, loc)*.
    async fn run_cells(
        &self,
        script: &Script,
        reservation_id: &str,
        mode: Option<&str>,
        cells: &[Cell],
    ) -> CounterResult<Vec<String>> {
        let skus = unique_skus(cells.iter().map(|c| &c.sku));
        let mut invocation = self.invocation(script, &skus);
        invocation.arg(reservation_id);
        if let Some(mode) = mode {
            invocation.arg(mode);
        }
        invocation.arg(cells.len());
        for cell in cells {
            invocation.arg(group_of(&skus, &cell.sku)).arg(&cell.location);
        }
        self.run(&invocation).await
    }

    pub(crate) async fn snapshot(&self, skus: &[String]) -> CounterResult<Vec<SkuSnapshot>> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
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
                let counters = cells.entry(loc.to_owned()).or_default();
                match kind {
                    "oh" => counters.on_hand = value,
                    "h" => counters.held = value,
                    "c" => counters.committed = value,
                    "s" => counters.safety = value,
                    _ => {}
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
        invocation.arg(&change.cell.location).arg(change.on_hand).arg(change.version).arg(reservation_id).arg(units);
        let values = self.run(&invocation).await?;
        let mut connection = self.connection.clone();
        // The SKU index lives outside the SKU's slot; adding to it is idempotent, so it need not be
        // in the same script.
        let _: i64 = redis::cmd("SADD").arg(self.skus_key()).arg(&change.cell.sku).query_async(&mut connection).await?;
        Ok(PhysicalOutcome { counters: counters_from(&values, 0)?, fulfilled_units: int(&values, 4)? })
    }

    pub(crate) async fn set_safety(&self, cell: &Cell, safety: i64) -> CounterResult<CellCounters> {
        let skus = [cell.sku.clone()];
        let mut invocation = self.invocation(&SET_SAFETY, &skus);
        invocation.arg(&cell.location).arg(safety);
        let values = self.run(&invocation).await?;
        let mut connection = self.connection.clone();
        let _: i64 = redis::cmd("SADD").arg(self.skus_key()).arg(&cell.sku).query_async(&mut connection).await?;
        counters_from(&values, 0)
    }

    pub(crate) async fn reserve(
        &self,
        reservation_id: &str,
        lines: &[CellUnits],
        ttl_ms: u64,
    ) -> CounterResult<ReserveOutcome> {
        let skus = unique_skus(lines.iter().map(|l| &l.cell.sku));
        let mut invocation = self.invocation(&RESERVE, &skus);
        invocation.arg(reservation_id).arg(ttl_ms).arg(lines.len());
        for line in lines {
            invocation.arg(group_of(&skus, &line.cell.sku)).arg(&line.cell.location).arg(line.units);
        }
        let values = self.run(&invocation).await?;
        match int(&values, 0)? {
            1 => Ok(ReserveOutcome::Held { expires_at_ms: int(&values, 1)? }),
            2 => Ok(ReserveOutcome::AlreadyExists { expires_at_ms: int(&values, 1)? }),
            _ => {
                let mut shortages = Vec::new();
                for chunk in values[2..].chunks(4) {
                    let group = int(chunk, 0)? as usize;
                    let sku = skus
                        .get(group.wrapping_sub(1))
                        .cloned()
                        .ok_or_else(|| CounterError::Protocol("bad group".into()))?;
                    shortages.push(Shortage {
                        cell: Cell::new(sku, text(chunk, 1)?),
                        requested: int(chunk, 2)?,
                        available: int(chunk, 3)?,
                    });
                }
                Ok(ReserveOutcome::Insufficient { shortages })
            }
        }
    }

    pub(crate) async fn confirm(&self, reservation_id: &str, cells: &[Cell]) -> CounterResult<ConfirmOutcome> {
        let values = self.run_cells(&CONFIRM, reservation_id, None, cells).await?;
        let now_ms = int(&values, 1)?;
        Ok(match int(&values, 0)? {
            1 => ConfirmOutcome::Confirmed { now_ms },
            2 => ConfirmOutcome::AlreadyConfirmed { now_ms },
            _ => ConfirmOutcome::HoldMissing { now_ms },
        })
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
        let values = self.run_cells(&RELEASE, reservation_id, Some(mode), cells).await?;
        Ok(Released { hold_units: int(&values, 0)?, committed_units: int(&values, 1)? })
    }

    pub(crate) async fn hold_state(&self, reservation_id: &str, cells: &[Cell]) -> CounterResult<HoldState> {
        let values = self.run_cells(&HOLD_STATE, reservation_id, None, cells).await?;
        Ok(HoldState {
            live_cells: int(&values, 0)? as usize,
            committed_cells: int(&values, 1)? as usize,
            earliest_deadline_ms: int(&values, 2)?,
            now_ms: int(&values, 3)?,
        })
    }

    pub(crate) async fn all_skus(&self) -> CounterResult<Vec<String>> {
        let mut connection = self.connection.clone();
        let mut skus: Vec<String> = redis::cmd("SMEMBERS").arg(self.skus_key()).query_async(&mut connection).await?;
        skus.sort();
        Ok(skus)
    }
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
