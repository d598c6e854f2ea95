//! Opening the relational store: PostgreSQL in production, a SQLite file on the embedded default
//! (its folder is created; WAL journal; one connection, so SQLite never answers "database is
//! locked" under concurrent writers: it serialises them instead).
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::config::DatabaseSettings;

/// Tells whether the URL names PostgreSQL.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres")
}

/// Connects to the configured store.
///
/// # Errors
/// The store cannot be reached or the SQLite folder cannot be created.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    let url = settings.url.as_str();
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).connect_timeout(settings.acquire_timeout).acquire_timeout(settings.acquire_timeout);
    if is_postgres(url) {
        options.max_connections(settings.max_connections);
    } else {
        create_sqlite_folder(url)?;
        options.max_connections(1).min_connections(1).map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
    }
    Database::connect(options).await
}

fn create_sqlite_folder(url: &str) -> Result<(), DbErr> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}
