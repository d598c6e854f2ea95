//! The reservation service's migrations (its own migration table).
use sea_orm::Schema;
use sea_orm_migration::{MigratorTrait, prelude::*};

use crate::store::entities::{history, line, reservation};

/// Runs the reservation migrations in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261203_000001_create_tables::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "reservation_migrations".into_iden()
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
            manager
                .create_table(schema.create_table_from_entity(reservation::Entity).if_not_exists().to_owned())
                .await?;
            manager.create_table(schema.create_table_from_entity(line::Entity).if_not_exists().to_owned()).await?;
            manager.create_table(schema.create_table_from_entity(history::Entity).if_not_exists().to_owned()).await?;
            manager
                .create_index(
                    Index::create()
                        .name("reservation_status_deadline")
                        .table(reservation::Entity)
                        .col(reservation::Column::Status)
                        .col(reservation::Column::ExpiresAtMs)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("reservation_history_by_reservation")
                        .table(history::Entity)
                        .col(history::Column::ReservationId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for table in [history::Entity.into_iden(), line::Entity.into_iden(), reservation::Entity.into_iden()] {
                manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
            }
            Ok(())
        }
    }
}
