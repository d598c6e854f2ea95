//! The replenishment service's migrations (its own migration table).
use sea_orm::Schema;
use sea_orm_migration::{MigratorTrait, prelude::*};

use crate::store::entities::{alert, demand};

/// Runs the replenishment migrations in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261203_000001_create_tables::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "replenishment_migrations".into_iden()
    }
}

mod m20261203_000001_create_tables {
    use super::*;

    /// Named explicitly (the derive names every migration in this file after the file). The
    /// first migration keeps the name it was applied under, "migration", so databases created
    /// by earlier builds still match.
    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "migration"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let schema = Schema::new(manager.get_database_backend());
            manager.create_table(schema.create_table_from_entity(demand::Entity).if_not_exists().to_owned()).await?;
            manager.create_table(schema.create_table_from_entity(alert::Entity).if_not_exists().to_owned()).await?;
            manager
                .create_index(
                    Index::create()
                        .name("replenishment_demand_time")
                        .table(demand::Entity)
                        .col(demand::Column::OccurredAtMs)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("replenishment_alerts_cell")
                        .table(alert::Entity)
                        .col(alert::Column::Sku)
                        .col(alert::Column::LocationId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.drop_table(Table::drop().table(alert::Entity).if_exists().to_owned()).await?;
            manager.drop_table(Table::drop().table(demand::Entity).if_exists().to_owned()).await
        }
    }
}
