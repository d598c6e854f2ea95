//! The availability service's migrations (its own migration table, so services sharing one
//! database never collide).
use sea_orm::Schema;
use sea_orm_migration::{MigratorTrait, prelude::*};

use crate::store::entities::{channel, event, item, location, position};

/// Runs the availability migrations in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261203_000001_create_tables::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "availability_migrations".into_iden()
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
            manager.create_table(schema.create_table_from_entity(location::Entity).if_not_exists().to_owned()).await?;
            manager.create_table(schema.create_table_from_entity(item::Entity).if_not_exists().to_owned()).await?;
            manager.create_table(schema.create_table_from_entity(channel::Entity).if_not_exists().to_owned()).await?;
            manager.create_table(schema.create_table_from_entity(position::Entity).if_not_exists().to_owned()).await?;
            manager.create_table(schema.create_table_from_entity(event::Entity).if_not_exists().to_owned()).await?;
            manager
                .create_index(
                    Index::create()
                        .name("availability_events_cell_time")
                        .table(event::Entity)
                        .col(event::Column::Sku)
                        .col(event::Column::LocationId)
                        .col(event::Column::OccurredAtMs)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for table in [
                event::Entity.into_iden(),
                position::Entity.into_iden(),
                channel::Entity.into_iden(),
                item::Entity.into_iden(),
                location::Entity.into_iden(),
            ] {
                manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
            }
            Ok(())
        }
    }
}
