//! Group commit of the reserve path's two PostgreSQL writes: the PENDING claim and the outcome
//! record (HELD, or REJECTED when the stock was short).
//! Concurrent reserves queue their write; a writer takes everything queued (up to [`MAX_BATCH`])
//! and records it as one fixed statement in one transaction, so a batch of reserves shares one
//! round trip and one plan. Each caller is answered only after its batch committed. No timer
//! waits for a batch to fill: a lone request is written at once, and batches grow only while
//! earlier ones are in flight (at most [`IN_FLIGHT`] per kind).
//!
//! These two writes are the hold's write-behind (invariant 7, "nothing accepted is lost", in
//! docs/architecture.md): their transactions commit with `synchronous_commit = off`, so they are
//! visible at once and on disk within PostgreSQL's WAL-writer bound (3 × `wal_writer_delay`, 600 ms
//! by default). Everything else (confirm, release, extend, events) commits synchronously, and a
//! synchronous commit flushes all WAL before it, so a confirmed reservation's claim and hold are
//! never lost. What a PostgreSQL crash can lose is the record of holds taken in that window; their
//! units stay held in Redis until the TTL and then return to ATP, and a confirm of such a hold is
//! NOT_FOUND.
//!
//! Rows are found by primary key only (`status + 0`, see `store::status_is`).
//!
//! A reservation id appears at most once per statement; a second write for the same id in one
//! batch is done on its own afterwards, so every write sees the one before it.
use std::{
    collections::HashSet,
    sync::{Arc, OnceLock},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::domain::{NewReservation, Status};
use crate::store::policy_code;
use mesh_counters::CellUnits;

/// Most writes one statement carries.
pub const MAX_BATCH: usize = 256;
/// Batches of one kind in flight at once.
pub const IN_FLIGHT: usize = 4;

/// One queued PENDING claim: answered true when this request inserted the id.
pub struct Claim {
    pub new: NewReservation,
    pub now: i64,
}

/// One queued outcome of a reserve, PENDING → HELD (or REJECTED, with nothing held and the
/// shortages as `detail`): answered true when the record was still PENDING.
pub struct Outcome {
    pub reservation_id: String,
    pub status: Status,
    pub detail: String,
    pub expires_at_ms: i64,
    pub hold_limit_ms: i64,
    pub held: Vec<CellUnits>,
    pub reason: String,
    pub now: i64,
}

type Reply = oneshot::Sender<Result<bool, DbErr>>;
/// One queued job and where its answer goes.
type Job<J> = (J, Reply);

/// The queues and their writers, started on first use (on the caller's runtime).
#[derive(Clone, Default)]
pub struct GroupCommit {
    queues: Arc<OnceLock<Queues>>,
}

struct Queues {
    claims: mpsc::UnboundedSender<Job<Claim>>,
    outcomes: mpsc::UnboundedSender<Job<Outcome>>,
}

impl GroupCommit {
    /// Queues a claim and waits for its batch to commit.
    pub async fn claim(&self, db: &DatabaseConnection, claim: Claim) -> Result<bool, DbErr> {
        let (reply, answer) = oneshot::channel();
        self.queues(db).claims.send((claim, reply)).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Queues a reserve's outcome record (HELD or REJECTED) and waits for its batch to commit.
    pub async fn outcome(&self, db: &DatabaseConnection, outcome: Outcome) -> Result<bool, DbErr> {
        let (reply, answer) = oneshot::channel();
        self.queues(db).outcomes.send((outcome, reply)).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    fn queues(&self, db: &DatabaseConnection) -> &Queues {
        self.queues.get_or_init(|| {
            let (claims, claim_rx) = mpsc::unbounded_channel();
            let (outcomes, outcome_rx) = mpsc::unbounded_channel();
            tokio::spawn(run_writer(db.clone(), claim_rx, write_claims));
            tokio::spawn(run_writer(db.clone(), outcome_rx, write_outcomes));
            Queues { claims, outcomes }
        })
    }
}

fn writer_gone() -> DbErr {
    DbErr::Conn(RuntimeErr::Internal("the group-commit writer stopped (shutting down)".to_owned()))
}

/// Takes what is queued, up to MAX_BATCH, and writes it as one batch; up to IN_FLIGHT at once.
async fn run_writer<J, F, Fut>(db: DatabaseConnection, mut queue: mpsc::UnboundedReceiver<Job<J>>, write: F)
where
    J: Send + 'static,
    F: Fn(DatabaseConnection, Vec<Job<J>>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let db = db.clone();
        tokio::spawn(async move {
            write(db, batch).await;
            drop(slot);
        });
    }
}

/// Splits a batch into first writes per id and later writes for an id already in it.
fn split_repeats<J>(batch: Vec<Job<J>>, id: impl Fn(&J) -> &str) -> (Vec<Job<J>>, Vec<Job<J>>) {
    let mut seen = HashSet::new();
    batch.into_iter().partition(|(job, _)| seen.insert(id(job).to_owned()))
}

/// Answers every job of a batch from the ids its statement reports as written.
fn answer<J>(batch: Vec<Job<J>>, id: impl Fn(&J) -> &str, written: Result<HashSet<String>, DbErr>) {
    match written {
        Ok(written) => {
            for (job, reply) in batch {
                let _ = reply.send(Ok(written.contains(id(&job))));
            }
        }
        Err(error) => {
            // Each caller gets an error of the same kind (a lost connection stays UNAVAILABLE).
            let unavailable = matches!(service_kit::error::db_error_kind(&error), service_kit::ErrorKind::Unavailable);
            let message = error.to_string();
            let mut first = Some(error);
            for (_, reply) in batch {
                let error = first.take().unwrap_or_else(|| {
                    if unavailable {
                        DbErr::Conn(RuntimeErr::Internal(message.clone()))
                    } else {
                        DbErr::Custom(message.clone())
                    }
                });
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A batch statement: `$1` the rows, `$2` their lines (both JSON arrays), then the status codes.
fn batch_statement(
    sql: &str,
    rows: Vec<serde_json::Value>,
    lines: Vec<serde_json::Value>,
    statuses: &[Status],
) -> Statement {
    let mut values: Vec<sea_orm::Value> =
        vec![serde_json::Value::Array(rows).to_string().into(), serde_json::Value::Array(lines).to_string().into()];
    values.extend(statuses.iter().map(|s| s.code().into()));
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn ids_of(db: &DatabaseConnection, statement: Statement) -> Result<HashSet<String>, DbErr> {
    let rows = db.query_all_raw(statement).await?;
    rows.iter().map(|row| row.try_get_by_index::<String>(0)).collect()
}

/// The SQL call that lets one transaction commit without waiting for its WAL flush (the bounded
/// write-behind above); every such statement names it through this macro.
macro_rules! async_commit {
    () => {
        "set_config('synchronous_commit', 'off', true)"
    };
}
pub(crate) use async_commit;

const CLAIM_SQL: &str = concat!(
    "WITH v AS (SELECT v.*, s.async FROM jsonb_to_recordset($1::jsonb) AS v(rid text, body_hash text, \
     order_id text, channel_id text, ttl_ms bigint, policy int, now bigint), ",
    async_commit!(),
    " AS s(async)), \
     r AS (INSERT INTO reservation_reservations (reservation_id, body_hash, order_id, channel_id, status, ttl_ms, \
     expires_at_ms, released_units, detail, created_at_ms, updated_at_ms, policy, hold_limit_ms) \
     SELECT rid, body_hash, order_id, channel_id, $3, ttl_ms, 0, 0, '', now, now, policy, 0 FROM v \
     ON CONFLICT DO NOTHING RETURNING reservation_id), \
     l AS (INSERT INTO reservation_lines (reservation_id, sku, location_id, position, units, reserved_units, \
     released_units, released) SELECT x.rid, x.sku, x.loc, x.pos, x.units, 0, 0, FALSE \
     FROM jsonb_to_recordset($2::jsonb) AS x(rid text, sku text, loc text, pos int, units bigint) \
     JOIN r ON r.reservation_id = x.rid) \
     SELECT reservation_id FROM r"
);

/// Writes a batch of claims: the rows and their lines for every id not taken, in one statement.
async fn write_claims(db: DatabaseConnection, batch: Vec<Job<Claim>>) {
    let (batch, repeats) = split_repeats(batch, |c: &Claim| c.new.reservation_id.as_str());
    let rows: Vec<_> = batch
        .iter()
        .map(|(c, _)| {
            json!({"rid": c.new.reservation_id, "body_hash": c.new.body_hash(), "order_id": c.new.order_id,
                   "channel_id": c.new.channel_id, "ttl_ms": c.new.ttl_ms, "policy": policy_code(c.new.policy),
                   "now": c.now})
        })
        .collect();
    let lines: Vec<_> = batch
        .iter()
        .flat_map(|(c, _)| {
            c.new.lines.iter().enumerate().map(|(i, l)| {
                json!({"rid": c.new.reservation_id, "sku": l.cell.sku, "loc": l.cell.location, "pos": i,
                       "units": l.units})
            })
        })
        .collect();
    let statement = batch_statement(CLAIM_SQL, rows, lines, &[Status::Pending]);
    let written = ids_of(&db, statement).await;
    answer(batch, |c: &Claim| c.new.reservation_id.as_str(), written);
    for (claim, reply) in repeats {
        Box::pin(write_claims(db.clone(), vec![(claim, reply)])).await;
    }
}

const OUTCOME_SQL: &str = concat!(
    "WITH v AS (SELECT v.*, s.async FROM jsonb_to_recordset($1::jsonb) AS v(rid text, status int, \
     expires bigint, hold_limit bigint, reason text, detail text, now bigint), ",
    async_commit!(),
    " AS s(async)), \
     r AS (UPDATE reservation_reservations AS t SET status = v.status, updated_at_ms = v.now, expires_at_ms = v.expires, \
     hold_limit_ms = v.hold_limit, detail = v.detail FROM v WHERE t.reservation_id = v.rid AND t.status + 0 = $3 \
     RETURNING t.reservation_id), \
     l AS (UPDATE reservation_lines AS t SET reserved_units = x.units \
     FROM jsonb_to_recordset($2::jsonb) AS x(rid text, sku text, loc text, units bigint) \
     JOIN r ON r.reservation_id = x.rid \
     WHERE t.reservation_id = x.rid AND t.sku = x.sku AND t.location_id = x.loc), \
     h AS (INSERT INTO reservation_history (reservation_id, status, at_ms, reason) \
     SELECT v.rid, v.status, v.now, v.reason FROM v JOIN r ON r.reservation_id = v.rid) \
     SELECT reservation_id FROM r"
);

/// Writes a batch of outcome records: PENDING → HELD (reserved units per line) or REJECTED, and
/// the history row.
async fn write_outcomes(db: DatabaseConnection, batch: Vec<Job<Outcome>>) {
    let (batch, repeats) = split_repeats(batch, |h: &Outcome| h.reservation_id.as_str());
    let rows: Vec<_> = batch
        .iter()
        .map(|(h, _)| {
            json!({"rid": h.reservation_id, "status": h.status.code(), "expires": h.expires_at_ms,
                   "hold_limit": h.hold_limit_ms, "reason": h.reason, "detail": h.detail, "now": h.now})
        })
        .collect();
    let lines: Vec<_> = batch
        .iter()
        .flat_map(|(h, _)| {
            h.held
                .iter()
                .map(|l| json!({"rid": h.reservation_id, "sku": l.cell.sku, "loc": l.cell.location, "units": l.units}))
        })
        .collect();
    let statement = batch_statement(OUTCOME_SQL, rows, lines, &[Status::Pending]);
    let written = ids_of(&db, statement).await;
    answer(batch, |h: &Outcome| h.reservation_id.as_str(), written);
    for (outcome, reply) in repeats {
        Box::pin(write_outcomes(db.clone(), vec![(outcome, reply)])).await;
    }
}
