//! The reservation service's durable store (sea-orm): one row per reservation (its status, body
//! digest, deadline, hold limit), its lines (asked, reserved, released units), its state history,
//! and the first answer of each keyed request (extends). The primary key of the reservation row is
//! the idempotency arbiter: the request that inserts it owns the reservation; concurrent duplicates
//! read it. Every status change is conditional on the status it leaves, so a hold ends exactly once.
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    domain::{NewReservation, Status},
    error::ReservationResult,
    group_commit::{Claim, GroupCommit, Outcome},
};
use mesh_counters::{Cell, CellUnits, ReservePolicy};

pub mod entities {
    //! Table definitions.
    pub mod reservation {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "reservation_reservations")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub reservation_id: String,
            pub body_hash: String,
            pub order_id: String,
            pub channel_id: String,
            pub status: i32,
            pub ttl_ms: i64,
            pub expires_at_ms: i64,
            pub released_units: i64,
            /// Why it was rejected (the shortages), for replaying the first answer.
            pub detail: String,
            pub created_at_ms: i64,
            pub updated_at_ms: i64,
            /// ReservePolicy code (0/1 all or nothing, 2 partial).
            pub policy: i32,
            /// The latest deadline an extend may reach (engine clock).
            pub hold_limit_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod line {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "reservation_lines")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub reservation_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub sku: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub location_id: String,
            pub position: i32,
            /// Units asked for.
            pub units: i64,
            /// Units held (then committed); less than asked only under the partial policy.
            pub reserved_units: i64,
            /// Units this line gave back when released (the line is released when > 0 or when
            /// `released` is set).
            pub released_units: i64,
            pub released: bool,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod request {
        use sea_orm::entity::prelude::*;

        /// The first answer of a keyed request (ExtendReservation), replayed to retries.
        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "reservation_requests")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub request_id: String,
            pub reservation_id: String,
            pub kind: String,
            pub body_hash: String,
            /// The encoded response; empty while the first request is still running.
            pub response: Vec<u8>,
            pub created_at_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod history {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "reservation_history")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i64,
            pub reservation_id: String,
            pub status: i32,
            pub at_ms: i64,
            pub reason: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{history, line, request, reservation};

/// One line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    pub cell: Cell,
    pub requested: i64,
    pub reserved: i64,
    pub released_units: i64,
    pub released: bool,
}

impl StoredLine {
    /// Tells whether the line still holds or commits units in the engine.
    pub fn is_active(&self) -> bool {
        self.reserved > 0 && !self.released
    }
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReservation {
    pub reservation_id: String,
    pub body_hash: String,
    pub order_id: String,
    pub channel_id: String,
    pub status: Status,
    pub expires_at_ms: i64,
    pub released_units: i64,
    pub detail: String,
    pub created_at_ms: i64,
    pub ttl_ms: i64,
    pub policy: ReservePolicy,
    pub hold_limit_ms: i64,
    pub lines: Vec<StoredLine>,
    pub history: Vec<(Status, i64, String)>,
}

impl StoredReservation {
    /// The cells that still hold or commit units in the engine.
    pub fn cells(&self) -> Vec<Cell> {
        self.lines.iter().filter(|l| l.is_active()).map(|l| l.cell.clone()).collect()
    }

    /// Every cell the reservation asked for (what a failed or abandoned reserve may have touched).
    pub fn all_cells(&self) -> Vec<Cell> {
        self.lines.iter().map(|l| l.cell.clone()).collect()
    }
}

/// Stored policy codes.
pub fn policy_code(policy: ReservePolicy) -> i32 {
    match policy {
        ReservePolicy::AllOrNothing => 1,
        ReservePolicy::Partial => 2,
    }
}

fn policy_from(code: i32) -> ReservePolicy {
    if code == 2 { ReservePolicy::Partial } else { ReservePolicy::AllOrNothing }
}

/// The reservation tables.
#[derive(Clone)]
pub struct ReservationStore {
    db: DatabaseConnection,
    /// Batches the reserve path's writes on PostgreSQL (see [`crate::group_commit`]).
    group: GroupCommit,
}

pub use service_kit::time::now_ms;

/// `status IN (codes)` for a lookup by reservation id, written so that PostgreSQL cannot answer
/// it from the (status, deadline) index: the primary key is always the right path there, but the
/// planner, seeing few PENDING rows in its statistics, would otherwise scan every PENDING entry of
/// that index (dead ones included, until vacuum) for each write, a cost that grows with the table.
fn status_is(codes: impl IntoIterator<Item = i32>) -> sea_orm::sea_query::SimpleExpr {
    Expr::col(reservation::Column::Status).add(0).is_in(codes)
}

async fn insert_history(
    txn: &sea_orm::DatabaseTransaction,
    reservation_id: &str,
    status: Status,
    at_ms: i64,
    reason: &str,
) -> Result<(), sea_orm::DbErr> {
    history::Entity::insert(history::ActiveModel {
        id: NotSet,
        reservation_id: Set(reservation_id.to_owned()),
        status: Set(status.code()),
        at_ms: Set(at_ms),
        reason: Set(reason.to_owned()),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

impl ReservationStore {
    /// Wraps a connection (migrations already applied).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, group: GroupCommit::default() }
    }

    /// Inserts the PENDING claim row with its lines. Returns false when the id already exists.
    pub async fn claim(&self, new: &NewReservation, now: i64) -> ReservationResult<bool> {
        if self.is_postgres() {
            return Ok(self.group.claim(&self.db, Claim { new: new.clone(), now }).await?);
        }
        let txn = self.db.begin().await?;
        let inserted = reservation::Entity::insert(reservation::ActiveModel {
            reservation_id: Set(new.reservation_id.clone()),
            body_hash: Set(new.body_hash()),
            order_id: Set(new.order_id.clone()),
            channel_id: Set(new.channel_id.clone()),
            status: Set(Status::Pending.code()),
            ttl_ms: Set(new.ttl_ms as i64),
            expires_at_ms: Set(0),
            released_units: Set(0),
            detail: Set(String::new()),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            policy: Set(policy_code(new.policy)),
            hold_limit_ms: Set(0),
        })
        .exec_without_returning(&txn)
        .await;
        if inserted.is_err() {
            // The primary key is taken: another request owns this id (the transaction rolls back).
            return Ok(false);
        }
        let lines = new.lines.iter().enumerate().map(|(i, l)| line::ActiveModel {
            reservation_id: Set(new.reservation_id.clone()),
            sku: Set(l.cell.sku.clone()),
            location_id: Set(l.cell.location.clone()),
            position: Set(i as i32),
            units: Set(l.units),
            reserved_units: Set(0),
            released_units: Set(0),
            released: Set(false),
        });
        line::Entity::insert_many(lines).exec_without_returning(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }

    fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DbBackend::Postgres
    }

    /// Deletes a PENDING claim whose reserve never ran (so a retry starts fresh).
    pub async fn drop_claim(&self, reservation_id: &str) -> ReservationResult<()> {
        let txn = self.db.begin().await?;
        let deleted = reservation::Entity::delete_many()
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(status_is([Status::Pending.code()]))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 1 {
            line::Entity::delete_many().filter(line::Column::ReservationId.eq(reservation_id)).exec(&txn).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Loads a reservation with its lines and history.
    pub async fn get(&self, reservation_id: &str) -> ReservationResult<Option<StoredReservation>> {
        let Some(row) = reservation::Entity::find_by_id(reservation_id.to_owned()).one(&self.db).await? else {
            return Ok(None);
        };
        let lines = line::Entity::find()
            .filter(line::Column::ReservationId.eq(reservation_id))
            .order_by_asc(line::Column::Position)
            .all(&self.db)
            .await?;
        let history = history::Entity::find()
            .filter(history::Column::ReservationId.eq(reservation_id))
            .order_by_asc(history::Column::Id)
            .all(&self.db)
            .await?;
        Ok(Some(StoredReservation {
            reservation_id: row.reservation_id,
            body_hash: row.body_hash,
            order_id: row.order_id,
            channel_id: row.channel_id,
            status: Status::from_code(row.status),
            expires_at_ms: row.expires_at_ms,
            released_units: row.released_units,
            detail: row.detail,
            created_at_ms: row.created_at_ms,
            ttl_ms: row.ttl_ms,
            policy: policy_from(row.policy),
            hold_limit_ms: row.hold_limit_ms,
            lines: lines
                .into_iter()
                .map(|l| StoredLine {
                    cell: Cell::new(l.sku, l.location_id),
                    requested: l.units,
                    reserved: l.reserved_units,
                    released_units: l.released_units,
                    released: l.released,
                })
                .collect(),
            history: history.into_iter().map(|h| (Status::from_code(h.status), h.at_ms, h.reason)).collect(),
        }))
    }

    /// Moves a reservation from one of `from` to `to`, recording the change (and `detail`, when
    /// given). Returns false when its status was no longer one of `from` (another request moved it
    /// first).
    pub async fn transition(
        &self,
        reservation_id: &str,
        from: &[Status],
        to: Status,
        reason: &str,
        detail: Option<&str>,
    ) -> ReservationResult<bool> {
        let now = now_ms();
        let txn = self.db.begin().await?;
        let mut update = reservation::Entity::update_many()
            .col_expr(reservation::Column::Status, Expr::value(to.code()))
            .col_expr(reservation::Column::UpdatedAtMs, Expr::value(now));
        if let Some(detail) = detail {
            update = update.col_expr(reservation::Column::Detail, Expr::value(detail));
        }
        let result = update
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(status_is(from.iter().map(|s| s.code())))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        if to == Status::Released || to == Status::Expired {
            // The lines hold nothing any more.
            line::Entity::update_many()
                .col_expr(line::Column::Released, Expr::value(true))
                .filter(line::Column::ReservationId.eq(reservation_id))
                .exec(&txn)
                .await?;
        }
        insert_history(&txn, reservation_id, to, now, reason).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// The earliest deadline of a HELD reservation.
    pub async fn earliest_held_deadline(&self) -> ReservationResult<Option<i64>> {
        Ok(reservation::Entity::find()
            .select_only()
            .column(reservation::Column::ExpiresAtMs)
            .filter(reservation::Column::Status.eq(Status::Held.code()))
            .order_by_asc(reservation::Column::ExpiresAtMs)
            .limit(1)
            .into_tuple::<i64>()
            .one(&self.db)
            .await?)
    }

    /// How many reservations are HELD.
    pub async fn count_held(&self) -> ReservationResult<usize> {
        let n = reservation::Entity::find()
            .filter(reservation::Column::Status.eq(Status::Held.code()))
            .count(&self.db)
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// One page of the reservations after `after_id` in id order (walked on the primary key, so
    /// a full walk reads each row once whatever the table's history): the ids of those HELD and
    /// last changed before `before_ms`, and the last id the page looked at (None at the end).
    pub async fn held_changed_before(
        &self,
        before_ms: i64,
        after_id: &str,
        limit: u64,
    ) -> ReservationResult<(Vec<String>, Option<String>)> {
        let page: Vec<(String, i32, i64)> = reservation::Entity::find()
            .select_only()
            .column(reservation::Column::ReservationId)
            .column(reservation::Column::Status)
            .column(reservation::Column::UpdatedAtMs)
            .filter(reservation::Column::ReservationId.gt(after_id))
            .order_by_asc(reservation::Column::ReservationId)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        let last = page.last().map(|(id, _, _)| id.clone());
        let held = page
            .into_iter()
            .filter(|(_, status, updated)| *status == Status::Held.code() && *updated < before_ms)
            .map(|(id, _, _)| id)
            .collect();
        Ok((held, last))
    }

    /// Ids of PENDING claims older than `before_ms` (a crash between claim and answer).
    pub async fn stale_claims(&self, before_ms: i64, limit: u64) -> ReservationResult<Vec<String>> {
        Ok(reservation::Entity::find()
            .select_only()
            .column(reservation::Column::ReservationId)
            .filter(reservation::Column::Status.eq(Status::Pending.code()))
            .filter(reservation::Column::CreatedAtMs.lt(before_ms))
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.db)
            .await?)
    }

    /// Records a refused reserve: PENDING → REJECTED with the shortages as `detail` (batched like
    /// the hold record on PostgreSQL). Returns false when it was no longer PENDING.
    pub async fn reject(&self, reservation_id: &str, reason: &str, detail: &str) -> ReservationResult<bool> {
        if !self.is_postgres() {
            return self.transition(reservation_id, &[Status::Pending], Status::Rejected, reason, Some(detail)).await;
        }
        let reject = Outcome {
            reservation_id: reservation_id.to_owned(),
            status: Status::Rejected,
            detail: detail.to_owned(),
            expires_at_ms: 0,
            hold_limit_ms: 0,
            held: Vec::new(),
            reason: reason.to_owned(),
            now: now_ms(),
        };
        Ok(self.group.outcome(&self.db, reject).await?)
    }

    /// Records a held reservation: PENDING → HELD with its deadline, hold limit and the units each
    /// line holds. Returns false when it was no longer PENDING.
    pub async fn hold(
        &self,
        reservation_id: &str,
        expires_at_ms: i64,
        hold_limit_ms: i64,
        held: &[CellUnits],
        reason: &str,
        now: i64,
    ) -> ReservationResult<bool> {
        if self.is_postgres() {
            let hold = Outcome {
                reservation_id: reservation_id.to_owned(),
                status: Status::Held,
                detail: String::new(),
                expires_at_ms,
                hold_limit_ms,
                held: held.to_vec(),
                reason: reason.to_owned(),
                now,
            };
            return Ok(self.group.outcome(&self.db, hold).await?);
        }
        let txn = self.db.begin().await?;
        let result = reservation::Entity::update_many()
            .col_expr(reservation::Column::Status, Expr::value(Status::Held.code()))
            .col_expr(reservation::Column::UpdatedAtMs, Expr::value(now))
            .col_expr(reservation::Column::ExpiresAtMs, Expr::value(expires_at_ms))
            .col_expr(reservation::Column::HoldLimitMs, Expr::value(hold_limit_ms))
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(status_is([Status::Pending.code()]))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        for line in held {
            line::Entity::update_many()
                .col_expr(line::Column::ReservedUnits, Expr::value(line.units))
                .filter(line::Column::ReservationId.eq(reservation_id))
                .filter(line::Column::Sku.eq(&line.cell.sku))
                .filter(line::Column::LocationId.eq(&line.cell.location))
                .exec(&txn)
                .await?;
        }
        insert_history(&txn, reservation_id, Status::Held, now, reason).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Records lines given back while the reservation stays in `status` (units per cell), and
    /// moves it to RELEASED when `ends` is set. Returns false when its status was no longer `status`.
    pub async fn release_lines(
        &self,
        reservation_id: &str,
        status: Status,
        released: &[(Cell, i64)],
        ends: bool,
        reason: &str,
    ) -> ReservationResult<bool> {
        let now = now_ms();
        let total: i64 = released.iter().map(|(_, units)| units).sum();
        let txn = self.db.begin().await?;
        // This update locks the row, so concurrent releases of one reservation's lines take turns
        // and the last one sees every line released.
        let result = reservation::Entity::update_many()
            .col_expr(reservation::Column::UpdatedAtMs, Expr::value(now))
            .col_expr(reservation::Column::ReleasedUnits, Expr::col(reservation::Column::ReleasedUnits).add(total))
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(status_is([status.code()]))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        for (cell, units) in released {
            line::Entity::update_many()
                .col_expr(line::Column::ReleasedUnits, Expr::col(line::Column::ReleasedUnits).add(*units))
                .col_expr(line::Column::Released, Expr::value(true))
                .filter(line::Column::ReservationId.eq(reservation_id))
                .filter(line::Column::Sku.eq(&cell.sku))
                .filter(line::Column::LocationId.eq(&cell.location))
                .exec(&txn)
                .await?;
        }
        // Releasing the last open line ends the reservation, whichever call released the others.
        let whole = ends;
        let ends = whole
            || line::Entity::find()
                .filter(line::Column::ReservationId.eq(reservation_id))
                .filter(line::Column::Released.eq(false))
                .count(&txn)
                .await?
                == 0;
        let to = if ends { Status::Released } else { status };
        if to != status {
            reservation::Entity::update_many()
                .col_expr(reservation::Column::Status, Expr::value(to.code()))
                .filter(reservation::Column::ReservationId.eq(reservation_id))
                .exec(&txn)
                .await?;
        }
        let names: Vec<String> = released.iter().map(|(c, _)| format!("{}@{}", c.sku, c.location)).collect();
        let text = if whole { reason.to_owned() } else { format!("{reason}: lines {}", names.join(", ")) };
        insert_history(&txn, reservation_id, to, now, &text).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Moves a held reservation's deadline (an extend, or the sweeper catching up with one).
    pub async fn set_deadline(
        &self,
        reservation_id: &str,
        expires_at_ms: i64,
        reason: &str,
    ) -> ReservationResult<bool> {
        let now = now_ms();
        let txn = self.db.begin().await?;
        let result = reservation::Entity::update_many()
            .col_expr(reservation::Column::ExpiresAtMs, Expr::value(expires_at_ms))
            .col_expr(reservation::Column::UpdatedAtMs, Expr::value(now))
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(status_is([Status::Held.code()]))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        insert_history(&txn, reservation_id, Status::Held, now, reason).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Records many held reservations as EXPIRED in one transaction (the sweeper's batch). Returns
    /// how many moved (one still HELD only).
    pub async fn expire_many(&self, reservation_ids: &[String]) -> ReservationResult<usize> {
        if reservation_ids.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            // One statement, one round trip, one fixed plan (the ids travel as one JSON array):
            // move what is still HELD and record each move. Committed without waiting for the
            // WAL flush: a record lost with PostgreSQL stays HELD, and the next sweep expires it
            // again from the counters, which no longer hold it.
            let sql = format!(
                "WITH ids AS (SELECT jsonb_array_elements_text($3::jsonb) AS id, {async_commit}), \
                 moved AS (UPDATE reservation_reservations SET status = {expired}, updated_at_ms = $1 \
                 FROM ids WHERE reservation_id = ids.id AND status + 0 = {held} RETURNING reservation_id) \
                 INSERT INTO reservation_history (reservation_id, status, at_ms, reason) \
                 SELECT reservation_id, {expired}, $1, $2 FROM moved",
                async_commit = crate::group_commit::async_commit!(),
                expired = Status::Expired.code(),
                held = Status::Held.code(),
            );
            let ids = serde_json::Value::from(reservation_ids.to_vec()).to_string();
            let values: Vec<sea_orm::Value> = vec![now.into(), "expired".into(), ids.into()];
            let statement = sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, sql, values);
            let result = sea_orm::ConnectionTrait::execute_raw(&self.db, statement).await?;
            return Ok(result.rows_affected() as usize);
        }
        let txn = self.db.begin().await?;
        let moved = reservation::Entity::update_many()
            .col_expr(reservation::Column::Status, Expr::value(Status::Expired.code()))
            .col_expr(reservation::Column::UpdatedAtMs, Expr::value(now))
            .filter(reservation::Column::ReservationId.is_in(reservation_ids.iter().cloned()))
            .filter(reservation::Column::Status.eq(Status::Held.code()))
            .exec_with_returning(&txn)
            .await?;
        if !moved.is_empty() {
            let rows = moved.iter().map(|row| history::ActiveModel {
                id: NotSet,
                reservation_id: Set(row.reservation_id.clone()),
                status: Set(Status::Expired.code()),
                at_ms: Set(now),
                reason: Set("expired".to_owned()),
            });
            history::Entity::insert_many(rows).exec_without_returning(&txn).await?;
        }
        txn.commit().await?;
        Ok(moved.len())
    }

    /// Held reservations whose deadline passed, with their lines, oldest first (one query each).
    pub async fn held_past_deadline_with_lines(
        &self,
        now_ms: i64,
        after: Option<(i64, String)>,
        limit: u64,
    ) -> ReservationResult<Vec<(String, i64, Vec<Cell>)>> {
        // One join with a fixed text (numbers inlined): no IN list of thousands of ids to plan.
        // `after` continues from the last (deadline, id) of the previous batch.
        let backend = self.db.get_database_backend();
        let (after, values) = match after {
            // The id is bound ($1 on PostgreSQL, ? on SQLite): ids are the caller's strings.
            Some((deadline, id)) => {
                let placeholder = if backend == sea_orm::DbBackend::Postgres { "$1" } else { "?" };
                (format!(" AND (expires_at_ms, reservation_id) > ({deadline}, {placeholder})"), vec![id.into()])
            }
            None => (String::new(), Vec::new()),
        };
        let sql = format!(
            "SELECT r.reservation_id, r.expires_at_ms, l.sku, l.location_id FROM \
             (SELECT reservation_id, expires_at_ms FROM reservation_reservations \
              WHERE status = {held} AND expires_at_ms <= {now_ms}{after} \
              ORDER BY expires_at_ms, reservation_id LIMIT {limit}) r \
             LEFT JOIN reservation_lines l ON l.reservation_id = r.reservation_id \
              AND l.reserved_units > 0 AND NOT l.released \
             ORDER BY r.expires_at_ms, r.reservation_id",
            held = Status::Held.code()
        );
        let rows = self.db.query_all_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
        let mut out: Vec<(String, i64, Vec<Cell>)> = Vec::new();
        for row in rows {
            let (id, expires): (String, i64) = (row.try_get_by_index(0)?, row.try_get_by_index(1)?);
            let sku: Option<String> = row.try_get_by_index(2)?;
            let location: Option<String> = row.try_get_by_index(3)?;
            if out.last().is_none_or(|(last, _, _)| *last != id) {
                out.push((id, expires, Vec::new()));
            }
            if let (Some(sku), Some(location), Some((_, _, cells))) = (sku, location, out.last_mut()) {
                cells.push(Cell::new(sku, location));
            }
        }
        Ok(out)
    }

    /// Claims a keyed request. Returns None when this call owns it, or the stored row (whose
    /// response is empty while its owner is still running).
    pub async fn claim_request(
        &self,
        request_id: &str,
        reservation_id: &str,
        kind: &str,
        body_hash: &str,
    ) -> ReservationResult<Option<request::Model>> {
        let inserted = request::Entity::insert(request::ActiveModel {
            request_id: Set(request_id.to_owned()),
            reservation_id: Set(reservation_id.to_owned()),
            kind: Set(kind.to_owned()),
            body_hash: Set(body_hash.to_owned()),
            response: Set(Vec::new()),
            created_at_ms: Set(now_ms()),
        })
        .exec_without_returning(&self.db)
        .await;
        if inserted.is_ok() {
            return Ok(None);
        }
        Ok(request::Entity::find_by_id(request_id.to_owned()).one(&self.db).await?)
    }

    /// Stores the first answer of a keyed request.
    pub async fn finish_request(&self, request_id: &str, response: Vec<u8>) -> ReservationResult<()> {
        request::Entity::update_many()
            .col_expr(request::Column::Response, Expr::value(response))
            .filter(request::Column::RequestId.eq(request_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets a keyed request that failed (a retry runs it afresh).
    pub async fn drop_request(&self, request_id: &str) -> ReservationResult<()> {
        request::Entity::delete_by_id(request_id.to_owned()).exec(&self.db).await?;
        Ok(())
    }

    /// Every active line of reservations in the given statuses: (reservation id, status, deadline,
    /// line with the units it holds or commits; a PENDING claim's lines as asked).
    pub async fn lines_in_status(
        &self,
        statuses: &[Status],
    ) -> ReservationResult<Vec<(String, Status, i64, CellUnits)>> {
        // One join, not one query per chunk of ids: a long IN list makes the planner scan the
        // whole lines table once per chunk.
        let codes: Vec<String> = statuses.iter().map(|s| s.code().to_string()).collect();
        let sql = format!(
            "SELECT l.reservation_id, r.status, r.expires_at_ms, l.sku, l.location_id, l.units, l.reserved_units, \
             l.released FROM reservation_lines l JOIN reservation_reservations r ON r.reservation_id = l.reservation_id \
             WHERE r.status IN ({})",
            codes.join(", ")
        );
        let rows = self.db.query_all_raw(Statement::from_string(self.db.get_database_backend(), sql)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let status = Status::from_code(row.try_get_by_index::<i32>(1)?);
            let (units, reserved, released): (i64, i64, bool) =
                (row.try_get_by_index(5)?, row.try_get_by_index(6)?, row.try_get_by_index(7)?);
            // A PENDING claim has reserved nothing yet: report what it asked for.
            let units = if status == Status::Pending { units } else { reserved };
            if units == 0 || released {
                continue;
            }
            let cell = Cell::new(row.try_get_by_index::<String>(3)?, row.try_get_by_index::<String>(4)?);
            out.push((row.try_get_by_index(0)?, status, row.try_get_by_index(2)?, CellUnits { cell, units }));
        }
        Ok(out)
    }
}
