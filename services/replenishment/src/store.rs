//! The replenishment service's durable store: confirmed demand (idempotent by demand id) and
//! alerts (one open alert per cell and kind; closing it ends the crossing).
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, OnConflict},
};

use crate::{domain::AlertKind, error::ReplenishmentResult};

pub mod entities {
    //! Table definitions.
    pub mod demand {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "replenishment_demand")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub demand_id: String,
            pub sku: String,
            pub location_id: String,
            pub quantity: i64,
            pub occurred_at_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod alert {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "replenishment_alerts")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i64,
            pub sku: String,
            pub location_id: String,
            pub kind: i32,
            pub atp: i64,
            pub raised_at_ms: i64,
            pub closed_at_ms: Option<i64>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{alert, demand};

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    pub id: i64,
    pub sku: String,
    pub location_id: String,
    pub kind: AlertKind,
    pub atp: i64,
    pub raised_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

fn to_record(m: alert::Model) -> Option<AlertRecord> {
    Some(AlertRecord {
        id: m.id,
        kind: AlertKind::from_code(m.kind)?,
        sku: m.sku,
        location_id: m.location_id,
        atp: m.atp,
        raised_at_ms: m.raised_at_ms,
        closed_at_ms: m.closed_at_ms,
    })
}

/// The replenishment tables.
#[derive(Clone)]
pub struct ReplenishmentStore {
    db: DatabaseConnection,
}

impl ReplenishmentStore {
    /// Wraps a connection (migrations already applied).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Records one demand; returns false when its id was already recorded.
    pub async fn record_demand(
        &self,
        id: &str,
        sku: &str,
        location_id: &str,
        quantity: i64,
        occurred_at_ms: i64,
    ) -> ReplenishmentResult<bool> {
        let result = demand::Entity::insert(demand::ActiveModel {
            demand_id: Set(id.to_owned()),
            sku: Set(sku.to_owned()),
            location_id: Set(location_id.to_owned()),
            quantity: Set(quantity),
            occurred_at_ms: Set(occurred_at_ms),
        })
        .on_conflict(OnConflict::column(demand::Column::DemandId).do_nothing().to_owned())
        .exec_without_returning(&self.db)
        .await?;
        Ok(result == 1)
    }

    /// A recorded demand's body: (sku, location, units, occurred_at ms).
    pub async fn demand(&self, id: &str) -> ReplenishmentResult<Option<(String, String, i64, i64)>> {
        Ok(demand::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .map(|d| (d.sku, d.location_id, d.quantity, d.occurred_at_ms)))
    }

    /// The latest demand time recorded (the velocity clock), if any.
    pub async fn latest_demand_ms(&self) -> ReplenishmentResult<Option<i64>> {
        Ok(demand::Entity::find()
            .select_only()
            .column(demand::Column::OccurredAtMs)
            .order_by_desc(demand::Column::OccurredAtMs)
            .limit(1)
            .into_tuple::<i64>()
            .one(&self.db)
            .await?)
    }

    /// Units of demand per cell with occurred_at in (from, to].
    pub async fn demand_by_cell(
        &self,
        from_ms: i64,
        to_ms: i64,
        cell: Option<(&str, &str)>,
    ) -> ReplenishmentResult<Vec<(String, String, i64)>> {
        let mut query = demand::Entity::find()
            .select_only()
            .column(demand::Column::Sku)
            .column(demand::Column::LocationId)
            .column_as(Expr::cust("CAST(SUM(quantity) AS BIGINT)"), "units")
            .filter(demand::Column::OccurredAtMs.gt(from_ms))
            .filter(demand::Column::OccurredAtMs.lte(to_ms));
        if let Some((sku, location_id)) = cell {
            query = query.filter(demand::Column::Sku.eq(sku)).filter(demand::Column::LocationId.eq(location_id));
        }
        Ok(query
            .group_by(demand::Column::Sku)
            .group_by(demand::Column::LocationId)
            .into_tuple::<(String, String, i64)>()
            .all(&self.db)
            .await?)
    }

    /// Every cell that ever had demand or has an open alert.
    pub async fn known_cells(&self) -> ReplenishmentResult<Vec<(String, String)>> {
        let mut cells: Vec<(String, String)> = demand::Entity::find()
            .select_only()
            .column(demand::Column::Sku)
            .column(demand::Column::LocationId)
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        for open in self.alerts(false).await? {
            cells.push((open.sku, open.location_id));
        }
        cells.sort();
        cells.dedup();
        Ok(cells)
    }

    /// Lists alerts, newest last.
    pub async fn alerts(&self, include_closed: bool) -> ReplenishmentResult<Vec<AlertRecord>> {
        let mut query = alert::Entity::find().order_by_asc(alert::Column::Id);
        if !include_closed {
            query = query.filter(alert::Column::ClosedAtMs.is_null());
        }
        Ok(query.all(&self.db).await?.into_iter().filter_map(to_record).collect())
    }

    /// Every open alert, grouped by cell.
    pub async fn open_alerts_by_cell(
        &self,
    ) -> ReplenishmentResult<std::collections::HashMap<(String, String), Vec<AlertRecord>>> {
        let mut by_cell: std::collections::HashMap<(String, String), Vec<AlertRecord>> =
            std::collections::HashMap::new();
        for alert in self.alerts(false).await? {
            by_cell.entry((alert.sku.clone(), alert.location_id.clone())).or_default().push(alert);
        }
        Ok(by_cell)
    }

    /// Open alerts of one cell.
    pub async fn open_alerts(&self, sku: &str, location_id: &str) -> ReplenishmentResult<Vec<AlertRecord>> {
        Ok(alert::Entity::find()
            .filter(alert::Column::Sku.eq(sku))
            .filter(alert::Column::LocationId.eq(location_id))
            .filter(alert::Column::ClosedAtMs.is_null())
            .all(&self.db)
            .await?
            .into_iter()
            .filter_map(to_record)
            .collect())
    }

    /// Raises an alert.
    pub async fn raise(
        &self,
        sku: &str,
        location_id: &str,
        kind: AlertKind,
        atp: i64,
        now_ms: i64,
    ) -> ReplenishmentResult<AlertRecord> {
        let model = alert::Entity::insert(alert::ActiveModel {
            id: NotSet,
            sku: Set(sku.to_owned()),
            location_id: Set(location_id.to_owned()),
            kind: Set(kind.code()),
            atp: Set(atp),
            raised_at_ms: Set(now_ms),
            closed_at_ms: Set(None),
        })
        .exec_with_returning(&self.db)
        .await?;
        Ok(AlertRecord {
            id: model.id,
            sku: model.sku,
            location_id: model.location_id,
            kind,
            atp,
            raised_at_ms: now_ms,
            closed_at_ms: None,
        })
    }

    /// Closes an open alert.
    pub async fn close(&self, id: i64, now_ms: i64) -> ReplenishmentResult<()> {
        alert::Entity::update_many()
            .col_expr(alert::Column::ClosedAtMs, Expr::value(now_ms))
            .filter(alert::Column::Id.eq(id))
            .filter(alert::Column::ClosedAtMs.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
