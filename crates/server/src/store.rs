//! The server's state in SQLite (`<state>/server.db`, WAL): API keys (hashed), sandboxes (with
//! the record crash recovery needs) and templates.
//!
//! The schema is versioned with `PRAGMA user_version`; [`Store::open`] migrates an older file
//! and refuses a newer one. Commits use `synchronous = NORMAL`: a committed row survives a crash
//! of the server process (the case crash recovery handles), not necessarily a power loss.
//! Several processes may open the file at once (`stockade keys create` while the server runs):
//! SQLite serialises writers, and a busy database is retried for 5 s.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE templates (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    rootfs TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT,
    template TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    expires_at TEXT,
    state TEXT NOT NULL CHECK (state IN ('pooled', 'running', 'destroyed', 'lost')),
    recovery TEXT,
    destroyed_at TEXT,
    reason TEXT
);
CREATE INDEX sandboxes_state ON sandboxes (state);
CREATE INDEX sandboxes_owner ON sandboxes (owner);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "{path} has schema version {found}, newer than this stockade ({SCHEMA_VERSION}); use a newer stockade or another --state-dir"
    )]
    TooNew { path: String, found: i64 },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database: {0}")]
    Json(#[from] serde_json::Error),
    #[error("state database lock poisoned")]
    Poisoned,
}

/// One API key as stored (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub hash: [u8; 32],
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateRow {
    pub name: String,
    /// The policy TOML as given (rootfs applied, see [`crate::templates`]).
    pub policy: String,
    pub rootfs: Option<String>,
    pub created_at: String,
}

/// The life of a sandbox row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowState {
    /// In a warm pool: no owner yet.
    Pooled,
    Running,
    Destroyed,
    /// Found at start-up from a server that died: reaped by crash recovery.
    Lost,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pooled => "pooled",
            RowState::Running => "running",
            RowState::Destroyed => "destroyed",
            RowState::Lost => "lost",
        }
    }
    fn parse(s: &str) -> RowState {
        match s {
            "pooled" => RowState::Pooled,
            "running" => RowState::Running,
            "destroyed" => RowState::Destroyed,
            _ => RowState::Lost,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRow {
    pub id: String,
    pub owner: Option<String>,
    pub template: String,
    /// JSON object.
    pub metadata: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub state: RowState,
    /// JSON of `stockade_runtime::session::RecoveryRecord`.
    pub recovery: Option<String>,
    pub destroyed_at: Option<String>,
    pub reason: Option<String>,
}

/// A template name: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_template_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate(path)?;
        Ok(store)
    }

    fn migrate(&self, path: &Path) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
            });
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut conn)
    }

    // ---- keys ----

    pub fn insert_key(&self, row: &KeyRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO keys (id, name, hash, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.name, &row.hash[..], row.created_at, row.revoked_at],
            )?;
            Ok(())
        })
    }

    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyRow>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT id, name, hash, created_at, revoked_at FROM keys WHERE hash = ?1",
                params![&hash[..]],
                key_row,
            )
            .optional()?)
        })
    }

    pub fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, name, hash, created_at, revoked_at FROM keys ORDER BY created_at, id",
            )?;
            let rows = st.query_map([], key_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Marks a key revoked; false when there is no such key or it already was.
    pub fn revoke_key(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )? == 1)
        })
    }

    pub fn key_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT 1 FROM keys WHERE id = ?1", params![id], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
    }

    // ---- templates ----

    /// Adds a template; false when the name is taken.
    pub fn insert_template(&self, row: &TemplateRow) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "INSERT OR IGNORE INTO templates (name, policy, rootfs, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![row.name, row.policy, row.rootfs, row.created_at],
            )? == 1)
        })
    }

    pub fn template(&self, name: &str) -> Result<Option<TemplateRow>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT name, policy, rootfs, created_at FROM templates WHERE name = ?1",
                params![name],
                template_row,
            )
            .optional()?)
        })
    }

    pub fn list_templates(&self) -> Result<Vec<TemplateRow>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT name, policy, rootfs, created_at FROM templates ORDER BY name")?;
            let rows = st
                .query_map([], template_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Removes a template; false when there is none by that name.
    pub fn remove_template(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM templates WHERE name = ?1", params![name])? == 1))
    }

    // ---- sandboxes ----

    pub fn insert_sandbox(&self, row: &SandboxRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sandboxes (id, owner, template, metadata, created_at, expires_at, state, recovery, destroyed_at, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    row.id,
                    row.owner,
                    row.template,
                    row.metadata,
                    row.created_at,
                    row.expires_at,
                    row.state.as_str(),
                    row.recovery,
                    row.destroyed_at,
                    row.reason
                ],
            )?;
            Ok(())
        })
    }

    /// A pooled sandbox becomes `owner`'s; false when it was not pooled (nothing changed).
    pub fn hand_out(
        &self,
        id: &str,
        owner: &str,
        metadata: &str,
        created_at: &str,
        expires_at: &str,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE sandboxes SET owner = ?2, metadata = ?3, created_at = ?4, expires_at = ?5, state = 'running'
                 WHERE id = ?1 AND state = 'pooled'",
                params![id, owner, metadata, created_at, expires_at],
            )? == 1)
        })
    }

    pub fn set_expires(&self, id: &str, expires_at: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET expires_at = ?2 WHERE id = ?1",
                params![id, expires_at],
            )?;
            Ok(())
        })
    }

    /// The sandbox ended (`Destroyed` or `Lost`) at `at` for `reason`.
    pub fn mark_ended(
        &self,
        id: &str,
        state: RowState,
        reason: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET state = ?2, reason = ?3, destroyed_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, at],
            )?;
            Ok(())
        })
    }

    /// Rows of sandboxes that were alive (pooled or running) when their server last wrote.
    pub fn alive_rows(&self) -> Result<Vec<SandboxRow>, StoreError> {
        self.rows("WHERE state IN ('pooled', 'running') ORDER BY created_at, id")
    }

    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRow>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("{SANDBOX_COLS} WHERE id = ?1"),
                params![id],
                sandbox_row,
            )
            .optional()?)
        })
    }

    fn rows(&self, tail: &str) -> Result<Vec<SandboxRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!("{SANDBOX_COLS} {tail}"))?;
            let rows = st
                .query_map([], sandbox_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

const SANDBOX_COLS: &str = "SELECT id, owner, template, metadata, created_at, expires_at, state, recovery, destroyed_at, reason FROM sandboxes";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    let hash: Vec<u8> = r.get(2)?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Blob,
            "key hash is not 32 bytes".into(),
        )
    })?;
    Ok(KeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        hash,
        created_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        name: r.get(0)?,
        policy: r.get(1)?,
        rootfs: r.get(2)?,
        created_at: r.get(3)?,
    })
}

fn sandbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRow> {
    let state: String = r.get(6)?;
    Ok(SandboxRow {
        id: r.get(0)?,
        owner: r.get(1)?,
        template: r.get(2)?,
        metadata: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        state: RowState::parse(&state),
        recovery: r.get(7)?,
        destroyed_at: r.get(8)?,
        reason: r.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_keys_templates_sandboxes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let s = Store::open(&path).unwrap();
        let k = KeyRow {
            id: "k1".into(),
            name: "ci".into(),
            hash: [7; 32],
            created_at: "t".into(),
            revoked_at: None,
        };
        s.insert_key(&k).unwrap();
        assert_eq!(s.key_by_hash(&[7; 32]).unwrap(), Some(k.clone()));
        assert!(s.key_by_hash(&[8; 32]).unwrap().is_none());
        assert!(s.revoke_key("k1", "t2").unwrap());
        assert!(!s.revoke_key("k1", "t3").unwrap());
        assert_eq!(s.list_keys().unwrap()[0].revoked_at.as_deref(), Some("t2"));

        let t = TemplateRow {
            name: "py".into(),
            policy: "version = 1\n".into(),
            rootfs: None,
            created_at: "t".into(),
        };
        assert!(s.insert_template(&t).unwrap());
        assert!(!s.insert_template(&t).unwrap());
        assert_eq!(s.template("py").unwrap(), Some(t));
        assert!(s.remove_template("py").unwrap());
        assert!(!s.remove_template("py").unwrap());

        let row = SandboxRow {
            id: "0123456789abcdef".into(),
            owner: None,
            template: "base".into(),
            metadata: "{}".into(),
            created_at: "t".into(),
            expires_at: None,
            state: RowState::Pooled,
            recovery: Some("{}".into()),
            destroyed_at: None,
            reason: None,
        };
        s.insert_sandbox(&row).unwrap();
        assert!(s.hand_out(&row.id, "k1", "{}", "t1", "t2").unwrap());
        assert!(!s.hand_out(&row.id, "k1", "{}", "t1", "t2").unwrap());
        assert_eq!(s.alive_rows().unwrap().len(), 1);
        s.mark_ended(&row.id, RowState::Lost, "supervisor lost", "t3")
            .unwrap();
        assert!(s.alive_rows().unwrap().is_empty());
        assert_eq!(s.sandbox(&row.id).unwrap().unwrap().state, RowState::Lost);
        drop(s);
        // Reopening keeps everything; a newer schema is refused.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list_keys().unwrap().len(), 1);
        s.with(|c| Ok(c.pragma_update(None, "user_version", 99)?))
            .unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
