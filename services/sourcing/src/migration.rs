//! The sourcing service's migrations (its own migration table).
use sea_orm::Schema;
use sea_orm_migration::{MigratorTrait, prelude::*};

use crate::store::entities::decision;

/// Runs the sourcing migrations in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261203_000001_create_tables::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "sourcing_migrations".into_iden()
    }
}

mod m20261203_000001_create_tables {
    use super::*;

    #[derive(DeriveMigrationName)]
    pub struct Migration;

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
