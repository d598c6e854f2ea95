//! The reservation service's durable store (sea-orm): one row per reservation (its status, body
//! digest, deadline), its lines, and its state history. The primary key of the reservation row is
//! the idempotency arbiter: the request that inserts it owns the reservation; concurrent duplicates
//! read it. Every status change is conditional on the status it leaves, so a hold ends exactly once.
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    domain::{NewReservation, Status},
    error::ReservationResult,
};
use mesh_counters::{Cell, CellUnits};

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
            pub units: i64,
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

use entities::{history, line, reservation};

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
    pub lines: Vec<CellUnits>,
    pub history: Vec<(Status, i64, String)>,
}

impl StoredReservation {
    /// The reservation's cells.
    pub fn cells(&self) -> Vec<Cell> {
        self.lines.iter().map(|l| l.cell.clone()).collect()
    }
}

/// The reservation tables.
#[derive(Clone)]
pub struct ReservationStore {
    db: DatabaseConnection,
}

pub use service_kit::time::now_ms;

impl ReservationStore {
    /// Wraps a connection (migrations already applied).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Inserts the PENDING claim row with its lines. Returns false when the id already exists.
    pub async fn claim(&self, new: &NewReservation) -> ReservationResult<bool> {
        let now = now_ms();
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
        });
        line::Entity::insert_many(lines).exec_without_returning(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Deletes a PENDING claim whose reserve never ran (so a retry starts fresh).
    pub async fn drop_claim(&self, reservation_id: &str) -> ReservationResult<()> {
        let txn = self.db.begin().await?;
        let deleted = reservation::Entity::delete_many()
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(reservation::Column::Status.eq(Status::Pending.code()))
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
            lines: lines
                .into_iter()
                .map(|l| CellUnits { cell: Cell::new(l.sku, l.location_id), units: l.units })
                .collect(),
            history: history.into_iter().map(|h| (Status::from_code(h.status), h.at_ms, h.reason)).collect(),
        }))
    }

    /// Moves a reservation from one of `from` to `to`, recording the change. Returns false when its
    /// status was no longer one of `from` (another request moved it first).
    pub async fn transition(
        &self,
        reservation_id: &str,
        from: &[Status],
        to: Status,
        reason: &str,
        expires_at_ms: Option<i64>,
        released_units: i64,
        detail: Option<&str>,
    ) -> ReservationResult<bool> {
        let now = now_ms();
        let txn = self.db.begin().await?;
        let mut update = reservation::Entity::update_many()
            .col_expr(reservation::Column::Status, Expr::value(to.code()))
            .col_expr(reservation::Column::UpdatedAtMs, Expr::value(now))
            .col_expr(
                reservation::Column::ReleasedUnits,
                Expr::col(reservation::Column::ReleasedUnits).add(released_units),
            );
        if let Some(expires_at_ms) = expires_at_ms {
            update = update.col_expr(reservation::Column::ExpiresAtMs, Expr::value(expires_at_ms));
        }
        if let Some(detail) = detail {
            update = update.col_expr(reservation::Column::Detail, Expr::value(detail));
        }
        let result = update
            .filter(reservation::Column::ReservationId.eq(reservation_id))
            .filter(reservation::Column::Status.is_in(from.iter().map(|s| s.code())))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        history::Entity::insert(history::ActiveModel {
            id: NotSet,
            reservation_id: Set(reservation_id.to_owned()),
            status: Set(to.code()),
            at_ms: Set(now),
            reason: Set(reason.to_owned()),
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Ids of held reservations whose deadline has passed by this process's clock, oldest first.
    pub async fn held_past_deadline(&self, now_ms: i64, limit: u64) -> ReservationResult<Vec<String>> {
        let rows = reservation::Entity::find()
            .select_only()
            .column(reservation::Column::ReservationId)
            .filter(reservation::Column::Status.eq(Status::Held.code()))
            .filter(reservation::Column::ExpiresAtMs.lte(now_ms))
            .order_by_asc(reservation::Column::ExpiresAtMs)
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        Ok(rows)
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

    /// Every line of reservations in the given statuses: (reservation id, status, deadline, line).
    pub async fn lines_in_status(
        &self,
        statuses: &[Status],
    ) -> ReservationResult<Vec<(String, Status, i64, CellUnits)>> {
        let rows = reservation::Entity::find()
            .filter(reservation::Column::Status.is_in(statuses.iter().map(|s| s.code())))
            .all(&self.db)
            .await?;
        let mut by_id = std::collections::HashMap::new();
        for row in &rows {
            by_id.insert(row.reservation_id.clone(), (Status::from_code(row.status), row.expires_at_ms));
        }
        let mut out = Vec::new();
        for chunk in rows.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|r| r.reservation_id.clone()).collect();
            let lines = line::Entity::find().filter(line::Column::ReservationId.is_in(ids)).all(&self.db).await?;
            for l in lines {
                let (status, deadline) = by_id[&l.reservation_id];
                out.push((
                    l.reservation_id,
                    status,
                    deadline,
                    CellUnits { cell: Cell::new(l.sku, l.location_id), units: l.units },
                ));
            }
        }
        Ok(out)
    }
}
