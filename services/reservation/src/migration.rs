//! The reservation service's migrations (its own migration table).
use sea_orm::Schema;
use sea_orm_migration::{MigratorTrait, prelude::*};

use crate::store::entities::{history, line, request, reservation};

/// Runs the reservation migrations in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261203_000001_create_tables::Migration),
            Box::new(m20261203_000002_policy_extend_lines::Migration),
        ]
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

mod m20261203_000002_policy_extend_lines {
    //! Partial reservations (reserved and released units per line), the hold limit of extends,
    //! and the keyed-request table. Rows made before it hold every line in full.
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261203_000002_policy_extend_lines"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let columns: [(DynIden, ColumnDef); 5] = [
                (
                    reservation::Entity.into_iden(),
                    ColumnDef::new(reservation::Column::Policy).integer().not_null().default(1).to_owned(),
                ),
                (
                    reservation::Entity.into_iden(),
                    ColumnDef::new(reservation::Column::HoldLimitMs).big_integer().not_null().default(0).to_owned(),
                ),
                (
                    line::Entity.into_iden(),
                    ColumnDef::new(line::Column::ReservedUnits).big_integer().not_null().default(0).to_owned(),
                ),
                (
                    line::Entity.into_iden(),
                    ColumnDef::new(line::Column::ReleasedUnits).big_integer().not_null().default(0).to_owned(),
                ),
                (
                    line::Entity.into_iden(),
                    ColumnDef::new(line::Column::Released).boolean().not_null().default(false).to_owned(),
                ),
            ];
            // The first migration builds its tables from today's entities, so on a fresh database
            // the columns exist already.
            for (table, mut column) in columns {
                let column_name = column.get_column_name();
                if !manager.has_column(table.to_string(), &column_name).await? {
                    manager.alter_table(Table::alter().table(table).add_column(&mut column).to_owned()).await?;
                }
            }
            // Before this migration every line of a held or confirmed reservation held in full, and
            // lines of ended reservations hold nothing.
            let db = manager.get_connection();
            db.execute_unprepared("UPDATE reservation_lines SET reserved_units = units").await?;
            db.execute_unprepared(
                "UPDATE reservation_lines SET released = TRUE WHERE reservation_id IN \
                 (SELECT reservation_id FROM reservation_reservations WHERE status IN (3, 4, 5))",
            )
            .await?;
            let schema = Schema::new(manager.get_database_backend());
            manager.create_table(schema.create_table_from_entity(request::Entity).if_not_exists().to_owned()).await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.drop_table(Table::drop().table(request::Entity).if_exists().to_owned()).await?;
            for (table, column) in [
                (reservation::Entity.into_iden(), reservation::Column::Policy.into_iden()),
                (reservation::Entity.into_iden(), reservation::Column::HoldLimitMs.into_iden()),
                (line::Entity.into_iden(), line::Column::ReservedUnits.into_iden()),
                (line::Entity.into_iden(), line::Column::ReleasedUnits.into_iden()),
                (line::Entity.into_iden(), line::Column::Released.into_iden()),
            ] {
                manager.alter_table(Table::alter().table(table).drop_column(column).to_owned()).await?;
            }
            Ok(())
        }
    }
}
