//! The sourcing service's durable store: the decision made for each order (what was planned,
//! reserved and why), so a retried order gets the same answer and operators can look it up.
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, sea_query::OnConflict};

use crate::error::SourcingResult;

pub mod entities {
    //! Table definitions.
    pub mod decision {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "sourcing_decisions")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub order_id: String,
            /// The SourceOrderResponse, protobuf-encoded, hex.
            pub decision: String,
            pub reservation_id: String,
            pub created_at_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::decision;

/// The sourcing tables.
#[derive(Clone)]
pub struct SourcingStore {
    db: DatabaseConnection,
}

impl SourcingStore {
    /// Wraps a connection (migrations already applied).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Records an order's decision (the first one recorded wins).
    pub async fn record(&self, order_id: &str, reservation_id: &str, encoded: &[u8]) -> SourcingResult<()> {
        decision::Entity::insert(decision::ActiveModel {
            order_id: Set(order_id.to_owned()),
            decision: Set(hex::encode(encoded)),
            reservation_id: Set(reservation_id.to_owned()),
            created_at_ms: Set(chrono::Utc::now().timestamp_millis()),
        })
        .on_conflict(OnConflict::column(decision::Column::OrderId).do_nothing().to_owned())
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Returns an order's encoded decision.
    pub async fn get(&self, order_id: &str) -> SourcingResult<Option<Vec<u8>>> {
        Ok(decision::Entity::find_by_id(order_id.to_owned())
            .one(&self.db)
            .await?
            .and_then(|m| hex::decode(m.decision).ok()))
    }
}
