//! The sourcing service's migrations (its own migration table).
use sea_orm::Schema;
use sea_orm_migration::{MigratorTrait, prelude::*};

use crate::store::entities::decision;

/// The decisions table as created by migration 1 (entities change later; migrations never do).
#[derive(DeriveIden)]
enum Decisions {
    #[sea_orm(iden = "sourcing_decisions")]
    Table,
    RequestHash,
}

/// Runs the sourcing migrations in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261203_000001_create_tables::Migration), Box::new(m20261203_000002_request_hash::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "sourcing_migrations".into_iden()
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
            manager.create_table(schema.create_table_from_entity(decision::Entity).if_not_exists().to_owned()).await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.drop_table(Table::drop().table(decision::Entity).if_exists().to_owned()).await
        }
    }
}

mod m20261203_000002_request_hash {
    use super::*;

    /// Named explicitly (the derive names every migration in this file after the file).
    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261203_000002_request_hash"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            // Migration 1 builds the table from the entity, which has the column on a fresh database.
            if manager.has_column("sourcing_decisions", "request_hash").await? {
                return Ok(());
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(Decisions::Table)
                        .add_column(ColumnDef::new(Decisions::RequestHash).string().not_null().default(""))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(Table::alter().table(Decisions::Table).drop_column(Decisions::RequestHash).to_owned())
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Database};

    use super::*;

    #[tokio::test]
    async fn a_database_from_before_migration_2_upgrades() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        // What the first build left: migration 1 applied under its name, no request_hash column.
        db.execute_unprepared(
            "CREATE TABLE sourcing_decisions (order_id TEXT PRIMARY KEY, decision TEXT NOT NULL, \
             reservation_id TEXT NOT NULL, created_at_ms BIGINT NOT NULL);
             CREATE TABLE sourcing_migrations (version TEXT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO sourcing_migrations VALUES ('migration', 0);",
        )
        .await
        .unwrap();
        Migrator::up(&db, None).await.unwrap();
        let manager = SchemaManager::new(&db);
        assert!(manager.has_column("sourcing_decisions", "request_hash").await.unwrap());
        // And a fresh database gets both, idempotently.
        let fresh = Database::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&fresh, None).await.unwrap();
        Migrator::up(&fresh, None).await.unwrap();
        assert!(SchemaManager::new(&fresh).has_column("sourcing_decisions", "request_hash").await.unwrap());
    }
}
