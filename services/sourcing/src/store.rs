//! The sourcing service's durable store: the decision made for each order (what was planned,
//! reserved and why), so a retried order gets the same answer and operators can look it up.
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, sea_query::Expr};

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
            /// Digest of the request (empty on rows from before migration 2).
            pub request_hash: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::decision;

/// Who owns an order id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request is the first for the order.
    New,
    /// The same request was answered before: the recorded decision (encoded).
    Decided(Vec<u8>),
    /// The same request was started before and not answered (gave up, crashed or still running).
    Pending,
    /// The order id was used with a different request.
    Conflict,
}

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

    /// Claims an order id for a request digest (the first request owns the order id).
    pub async fn claim(&self, order_id: &str, request_hash: &str) -> SourcingResult<Claim> {
        let inserted = decision::Entity::insert(decision::ActiveModel {
            order_id: Set(order_id.to_owned()),
            decision: Set(String::new()),
            reservation_id: Set(String::new()),
            created_at_ms: Set(chrono::Utc::now().timestamp_millis()),
            request_hash: Set(request_hash.to_owned()),
        })
        .exec_without_returning(&self.db)
        .await;
        if inserted.is_ok() {
            return Ok(Claim::New);
        }
        let Some(existing) = decision::Entity::find_by_id(order_id.to_owned()).one(&self.db).await? else {
            // The insert failed for another reason than the key: surface it.
            inserted?;
            return Ok(Claim::New);
        };
        if existing.request_hash != request_hash {
            return Ok(Claim::Conflict);
        }
        Ok(match hex::decode(&existing.decision) {
            Ok(bytes) if !bytes.is_empty() => Claim::Decided(bytes),
            _ => Claim::Pending,
        })
    }

    /// Records an order's decision.
    pub async fn record(&self, order_id: &str, reservation_id: &str, encoded: &[u8]) -> SourcingResult<()> {
        decision::Entity::update_many()
            .col_expr(decision::Column::Decision, Expr::value(hex::encode(encoded)))
            .col_expr(decision::Column::ReservationId, Expr::value(reservation_id))
            .filter(decision::Column::OrderId.eq(order_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Returns an order's encoded decision.
    pub async fn get(&self, order_id: &str) -> SourcingResult<Option<Vec<u8>>> {
        Ok(decision::Entity::find_by_id(order_id.to_owned())
            .one(&self.db)
            .await?
            .and_then(|m| hex::decode(m.decision).ok())
            .filter(|bytes| !bytes.is_empty()))
    }
}
