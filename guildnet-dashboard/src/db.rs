//! The dashboard's SQLite database (`${state}/dashboard.db`): orgs and settings.

use chrono::{DateTime, Utc};
use guildnet_core::names::OrgName;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors from the dashboard database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The org is already there.
    #[error("org {0} already exists")]
    Duplicate(OrgName),
    /// SQLite failed.
    #[error("dashboard database {path}: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// The blocking task died.
    #[error("dashboard database task failed: {0}")]
    Task(String),
}

/// An org as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgRow {
    /// Name.
    pub name: OrgName,
    /// When it was created here.
    pub created_at: DateTime<Utc>,
}

/// Handle on the database (cheap to clone; one connection behind a mutex).
#[derive(Clone)]
pub struct Db {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let err = |source| DbError::Sqlite {
            path: path.to_owned(),
            source,
        };
        // Create the file 0600 first: SQLite gives its -wal and -shm files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    err(rusqlite::Error::InvalidPath(
                        format!("{}: {e}", path.display()).into(),
                    ))
                })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS orgs (
                 name TEXT PRIMARY KEY NOT NULL,
                 created_at TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS settings (
                 key TEXT PRIMARY KEY NOT NULL,
                 value TEXT NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| DbError::Task("database mutex poisoned".into()))?;
            f(&guard)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> DbError + Send + Clone + 'static {
        let path = self.path.clone();
        move |source| DbError::Sqlite {
            path: path.clone(),
            source,
        }
    }

    /// Inserts an org; [`DbError::Duplicate`] if it exists.
    pub async fn create_org(&self, name: &OrgName) -> Result<OrgRow, DbError> {
        let row = OrgRow {
            name: name.clone(),
            created_at: Utc::now(),
        };
        let r = row.clone();
        let err = self.sqlite();
        self.with(move |c| {
            match c.execute(
                "INSERT INTO orgs (name, created_at) VALUES (?1, ?2)",
                params![r.name.as_str(), r.created_at.to_rfc3339()],
            ) {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(DbError::Duplicate(r.name.clone()))
                }
                Err(e) => Err(err(e)),
            }
        })
        .await?;
        Ok(row)
    }

    /// All orgs, by name.
    pub async fn orgs(&self) -> Result<Vec<OrgRow>, DbError> {
        let err = self.sqlite();
        self.with(move |c| {
            let mut st = c
                .prepare("SELECT name, created_at FROM orgs ORDER BY name")
                .map_err(err.clone())?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err.clone())?;
            let mut out = Vec::new();
            for row in rows {
                let (name, created) = row.map_err(err.clone())?;
                // Rows were validated on insert; skip anything edited by hand into garbage.
                let Ok(name) = OrgName::new(name) else {
                    continue;
                };
                let created_at = DateTime::parse_from_rfc3339(&created)
                    .map(|d| d.with_timezone(&Utc))
                    .unwrap_or_default();
                out.push(OrgRow { name, created_at });
            }
            Ok(out)
        })
        .await
    }

    /// One org, if present.
    pub async fn org(&self, name: &OrgName) -> Result<Option<OrgRow>, DbError> {
        let name = name.clone();
        Ok(self.orgs().await?.into_iter().find(|o| o.name == name))
    }

    /// Deletes an org; returns whether it existed.
    pub async fn delete_org(&self, name: &OrgName) -> Result<bool, DbError> {
        let name = name.clone();
        let err = self.sqlite();
        self.with(move |c| {
            c.execute("DELETE FROM orgs WHERE name = ?1", params![name.as_str()])
                .map(|n| n > 0)
                .map_err(err)
        })
        .await
    }

    /// A setting's value.
    pub async fn setting(&self, key: &'static str) -> Result<Option<String>, DbError> {
        let err = self.sqlite();
        self.with(move |c| {
            c.query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)
        })
        .await
    }

    /// Sets a setting.
    pub async fn set_setting(&self, key: &'static str, value: String) -> Result<(), DbError> {
        let err = self.sqlite();
        self.with(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(err)
        })
        .await
    }
}

impl From<DbError> for crate::error::ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Duplicate(name) => {
                crate::error::ApiError::conflict(format!("org {name} already exists"))
                    .with_field("name")
            }
            other => crate::error::ApiError::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn orgs_and_settings_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard.db");
        let db = Db::open(&path).unwrap();
        let acme = OrgName::new("acme").unwrap();
        db.create_org(&acme).await.unwrap();
        assert!(matches!(
            db.create_org(&acme).await,
            Err(DbError::Duplicate(_))
        ));
        db.set_setting("k", "v1".into()).await.unwrap();
        db.set_setting("k", "v2".into()).await.unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.orgs().await.unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        for f in ["dashboard.db", "dashboard.db-wal", "dashboard.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert_eq!(db.setting("k").await.unwrap().as_deref(), Some("v2"));
        assert!(db.delete_org(&acme).await.unwrap());
        assert!(!db.delete_org(&acme).await.unwrap());
        assert!(db.orgs().await.unwrap().is_empty());
    }
}
