//! The availability service's durable store (sea-orm): locations, items, channels, the event ledger
//! and the cell positions. An event and the position it changes are written in one transaction;
//! the event id's primary key makes redelivery (sequential or concurrent) apply at most once, and the
//! position's version column turns a lost race into a retry.
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait, sea_query::OnConflict,
};

use crate::{
    domain::{self, InventoryEvent, Outcome, Position},
    error::{AvailabilityError, AvailabilityResult},
};
use mesh_counters::Cell;

pub mod entities {
    //! Table definitions.
    pub mod location {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "availability_locations")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub location_id: String,
            pub kind: i32,
            pub lat: Option<f64>,
            pub lon: Option<f64>,
            pub priority: i32,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod item {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "availability_items")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub sku: String,
            /// Substitute SKUs joined by ','.
            pub substitutes: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod channel {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "availability_channels")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub channel_id: String,
            /// Eligible location ids joined by ','.
            pub location_ids: String,
            pub buffer_units: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod position {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "availability_positions")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub sku: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub location_id: String,
            pub on_hand: i64,
            pub safety: i64,
            pub version: i64,
            pub last_count_at_ms: Option<i64>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod event {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "availability_events")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub event_id: String,
            pub body_hash: String,
            pub kind: i32,
            pub sku: String,
            pub location_id: String,
            pub quantity: i64,
            /// Signed change to on_hand of a delta event (0 for COUNT), applied or stale.
            pub delta: i64,
            pub occurred_at_ms: i64,
            pub source_system: String,
            pub reservation_id: Option<String>,
            pub restockable: bool,
            pub reason: String,
            pub outcome: i32,
            pub outcome_reason: String,
            pub fulfilled_units: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{channel, event, item, location, position};

/// A location as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationRecord {
    pub location_id: String,
    pub kind: i32,
    pub position: Option<(f64, f64)>,
    pub priority: i32,
}

/// A channel as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    pub channel_id: String,
    pub location_ids: Vec<String>,
    pub buffer_units: i64,
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub outcome: Outcome,
    pub reason: String,
    pub position: Position,
}

/// The availability tables.
#[derive(Clone)]
pub struct AvailabilityStore {
    db: DatabaseConnection,
}

fn join(values: &[String]) -> String {
    values.join(",")
}

fn split(value: &str) -> Vec<String> {
    value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn to_position(model: &position::Model) -> Position {
    Position {
        on_hand: model.on_hand,
        safety: model.safety,
        version: model.version,
        last_count_at_ms: model.last_count_at_ms,
    }
}

impl AvailabilityStore {
    /// Wraps a connection (migrations already applied).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// "postgres" or "sqlite".
    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => "postgres",
            _ => "sqlite",
        }
    }

    /// Creates or replaces locations.
    pub async fn upsert_locations(&self, locations: &[LocationRecord]) -> AvailabilityResult<()> {
        for chunk in locations.chunks(500) {
            let models = chunk.iter().map(|l| location::ActiveModel {
                location_id: Set(l.location_id.clone()),
                kind: Set(l.kind),
                lat: Set(l.position.map(|p| p.0)),
                lon: Set(l.position.map(|p| p.1)),
                priority: Set(l.priority),
            });
            location::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::column(location::Column::LocationId)
                        .update_columns([
                            location::Column::Kind,
                            location::Column::Lat,
                            location::Column::Lon,
                            location::Column::Priority,
                        ])
                        .to_owned(),
                )
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Lists every location by id.
    pub async fn list_locations(&self) -> AvailabilityResult<Vec<LocationRecord>> {
        let rows = location::Entity::find().order_by_asc(location::Column::LocationId).all(&self.db).await?;
        Ok(rows
            .into_iter()
            .map(|m| LocationRecord {
                location_id: m.location_id,
                kind: m.kind,
                position: m.lat.zip(m.lon),
                priority: m.priority,
            })
            .collect())
    }

    /// Creates or replaces items.
    pub async fn upsert_items(&self, items: &[(String, Vec<String>)]) -> AvailabilityResult<()> {
        for chunk in items.chunks(500) {
            let models = chunk.iter().map(|(sku, substitutes)| item::ActiveModel {
                sku: Set(sku.clone()),
                substitutes: Set(join(substitutes)),
            });
            item::Entity::insert_many(models)
                .on_conflict(OnConflict::column(item::Column::Sku).update_column(item::Column::Substitutes).to_owned())
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Returns an item's substitutes, or None when the SKU is unknown.
    pub async fn get_item(&self, sku: &str) -> AvailabilityResult<Option<Vec<String>>> {
        Ok(item::Entity::find_by_id(sku.to_owned()).one(&self.db).await?.map(|m| split(&m.substitutes)))
    }

    /// Creates or replaces channels.
    pub async fn upsert_channels(&self, channels: &[ChannelRecord]) -> AvailabilityResult<()> {
        for c in channels {
            let model = channel::ActiveModel {
                channel_id: Set(c.channel_id.clone()),
                location_ids: Set(join(&c.location_ids)),
                buffer_units: Set(c.buffer_units),
            };
            channel::Entity::insert(model)
                .on_conflict(
                    OnConflict::column(channel::Column::ChannelId)
                        .update_columns([channel::Column::LocationIds, channel::Column::BufferUnits])
                        .to_owned(),
                )
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Returns a channel, or None.
    pub async fn get_channel(&self, channel_id: &str) -> AvailabilityResult<Option<ChannelRecord>> {
        Ok(channel::Entity::find_by_id(channel_id.to_owned()).one(&self.db).await?.map(|m| ChannelRecord {
            channel_id: m.channel_id,
            location_ids: split(&m.location_ids),
            buffer_units: m.buffer_units,
        }))
    }

    /// Returns a cell's position (a cell never touched is all zero, version 0).
    pub async fn position(&self, cell: &Cell) -> AvailabilityResult<Position> {
        Ok(position::Entity::find_by_id((cell.sku.clone(), cell.location.clone()))
            .one(&self.db)
            .await?
            .map(|m| to_position(&m))
            .unwrap_or_default())
    }

    /// Returns every position.
    pub async fn all_positions(&self) -> AvailabilityResult<Vec<(Cell, Position)>> {
        let rows = position::Entity::find().all(&self.db).await?;
        Ok(rows.iter().map(|m| (Cell::new(&m.sku, &m.location_id), to_position(m))).collect())
    }

    /// Sets a cell's safety units, creating its position if needed.
    pub async fn set_safety(&self, cell: &Cell, safety: i64) -> AvailabilityResult<Position> {
        let txn = self.db.begin().await?;
        let current = position::Entity::find_by_id((cell.sku.clone(), cell.location.clone())).one(&txn).await?;
        let updated = match current {
            Some(model) => {
                let mut active: position::ActiveModel = model.into();
                active.safety = Set(safety);
                position::Entity::update(active).exec(&txn).await?
            }
            None => {
                position::Entity::insert(position::ActiveModel {
                    sku: Set(cell.sku.clone()),
                    location_id: Set(cell.location.clone()),
                    on_hand: Set(0),
                    safety: Set(safety),
                    version: Set(0),
                    last_count_at_ms: Set(None),
                })
                .exec_with_returning(&txn)
                .await?
            }
        };
        txn.commit().await?;
        Ok(to_position(&updated))
    }

    /// Records an event and applies it to its cell's position, in one transaction.
    ///
    /// # Errors
    /// `Conflict` when a concurrent writer changed the position or recorded the same event id first
    /// (the caller retries; a retry then sees the event as a duplicate).
    pub async fn record_event(&self, event: &InventoryEvent) -> AvailabilityResult<RecordedEvent> {
        let txn = self.db.begin().await?;
        let body_hash = event.body_hash();
        if let Some(existing) = event::Entity::find_by_id(event.event_id.clone()).one(&txn).await? {
            let position = self.position_in(&txn, &Cell::new(&existing.sku, &existing.location_id)).await?;
            txn.commit().await?;
            return Ok(if existing.body_hash == body_hash {
                RecordedEvent { outcome: Outcome::Duplicate, reason: String::new(), position }
            } else {
                RecordedEvent {
                    outcome: Outcome::Rejected,
                    reason: "event id already used with a different body".into(),
                    position,
                }
            });
        }
        let stored =
            position::Entity::find_by_id((event.cell.sku.clone(), event.cell.location.clone())).one(&txn).await?;
        let before = stored.as_ref().map(to_position).unwrap_or_default();
        let deltas_after_count = match event.delta() {
            None => self.deltas_after(&txn, &event.cell, event.occurred_at_ms).await?,
            Some(_) => 0,
        };
        let (mut outcome, mut after) = domain::apply_event(before, event, deltas_after_count);
        let mut reason = match (outcome, event.delta()) {
            (Outcome::Stale, None) => "a newer COUNT is already applied",
            (Outcome::Stale, Some(_)) => "occurred before the latest COUNT, which already includes it",
            _ => "",
        };
        if after.on_hand.abs() > domain::MAX_ON_HAND {
            (outcome, after, reason) =
                (Outcome::Rejected, before, "on_hand would leave the supported range of ±10^15 units");
        }
        event::Entity::insert(event::ActiveModel {
            event_id: Set(event.event_id.clone()),
            body_hash: Set(body_hash),
            kind: Set(event.kind.code()),
            sku: Set(event.cell.sku.clone()),
            location_id: Set(event.cell.location.clone()),
            quantity: Set(event.quantity),
            delta: Set(event.delta().unwrap_or(0)),
            occurred_at_ms: Set(event.occurred_at_ms),
            source_system: Set(event.source_system.clone()),
            reservation_id: Set(event.reservation_id.clone()),
            restockable: Set(event.restockable),
            reason: Set(event.reason.clone()),
            outcome: Set(outcome.code()),
            outcome_reason: Set(reason.to_owned()),
            fulfilled_units: Set(0),
        })
        .exec_without_returning(&txn)
        .await
        .map_err(|_| AvailabilityError::Conflict(format!("event {}", event.event_id)))?;
        if after != before || stored.is_none() {
            self.write_position(&txn, &event.cell, stored.is_some(), before.version, after).await?;
        }
        txn.commit().await.map_err(|_| AvailabilityError::Conflict(format!("event {}", event.event_id)))?;
        Ok(RecordedEvent { outcome, reason: reason.to_owned(), position: after })
    }

    /// Records how many committed units a shipment fulfilled.
    pub async fn set_fulfilled(&self, event_id: &str, units: i64) -> AvailabilityResult<()> {
        event::Entity::update_many()
            .col_expr(event::Column::FulfilledUnits, sea_orm::sea_query::Expr::value(units))
            .filter(event::Column::EventId.eq(event_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Tells whether a recorded event was applied (or recorded as stale) when first delivered.
    pub async fn was_applied(&self, event_id: &str) -> AvailabilityResult<bool> {
        let row = event::Entity::find_by_id(event_id.to_owned()).one(&self.db).await?;
        Ok(row.is_some_and(|r| r.outcome == Outcome::Applied.code() || r.outcome == Outcome::Stale.code()))
    }

    /// Returns the units a recorded event fulfilled (0 if none).
    pub async fn fulfilled_units(&self, event_id: &str) -> AvailabilityResult<i64> {
        Ok(event::Entity::find_by_id(event_id.to_owned()).one(&self.db).await?.map(|m| m.fulfilled_units).unwrap_or(0))
    }

    /// Units fulfilled per (reservation id, cell) by recorded shipments.
    pub async fn fulfilled_by_reservation(&self) -> AvailabilityResult<Vec<(String, Cell, i64)>> {
        let rows = event::Entity::find()
            .filter(event::Column::ReservationId.is_not_null())
            .filter(event::Column::FulfilledUnits.gt(0))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.reservation_id?, Cell::new(r.sku, r.location_id), r.fulfilled_units)))
            .collect())
    }

    async fn position_in(&self, conn: &impl ConnectionTrait, cell: &Cell) -> AvailabilityResult<Position> {
        Ok(position::Entity::find_by_id((cell.sku.clone(), cell.location.clone()))
            .one(conn)
            .await?
            .map(|m| to_position(&m))
            .unwrap_or_default())
    }

    async fn deltas_after(&self, conn: &impl ConnectionTrait, cell: &Cell, after_ms: i64) -> AvailabilityResult<i64> {
        let rows = event::Entity::find()
            .filter(event::Column::Sku.eq(cell.sku.as_str()))
            .filter(event::Column::LocationId.eq(cell.location.as_str()))
            .filter(event::Column::OccurredAtMs.gt(after_ms))
            .filter(event::Column::Kind.ne(domain::EventKind::Count.code()))
            .filter(event::Column::Outcome.is_in([Outcome::Applied.code(), Outcome::Stale.code()]))
            .all(conn)
            .await?;
        Ok(rows.iter().map(|r| r.delta).sum())
    }

    async fn write_position(
        &self,
        conn: &impl ConnectionTrait,
        cell: &Cell,
        exists: bool,
        expected_version: i64,
        after: Position,
    ) -> AvailabilityResult<()> {
        let lost_race = || AvailabilityError::Conflict(format!("position {}@{}", cell.sku, cell.location));
        if exists {
            let result = position::Entity::update_many()
                .col_expr(position::Column::OnHand, sea_orm::sea_query::Expr::value(after.on_hand))
                .col_expr(position::Column::Version, sea_orm::sea_query::Expr::value(after.version))
                .col_expr(position::Column::LastCountAtMs, sea_orm::sea_query::Expr::value(after.last_count_at_ms))
                .filter(position::Column::Sku.eq(cell.sku.as_str()))
                .filter(position::Column::LocationId.eq(cell.location.as_str()))
                .filter(position::Column::Version.eq(expected_version))
                .exec(conn)
                .await?;
            if result.rows_affected != 1 {
                return Err(lost_race());
            }
        } else {
            position::Entity::insert(position::ActiveModel {
                sku: Set(cell.sku.clone()),
                location_id: Set(cell.location.clone()),
                on_hand: Set(after.on_hand),
                safety: Set(after.safety),
                version: Set(after.version),
                last_count_at_ms: Set(after.last_count_at_ms),
            })
            .exec_without_returning(conn)
            .await
            .map_err(|_| lost_race())?;
        }
        Ok(())
    }
}
