//! Where SQLite and PostgreSQL differ. Every query of the store is written once; the few
//! places where the two dialects need different text ask [`Backend`] for it here.

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a `[database] url`: `postgres://` or `postgresql://` is PostgreSQL,
    /// anything else (a `sqlite:` URL or a plain path) SQLite.
    pub fn of_url(url: &str) -> Self {
        if crate::config::is_postgres_url(url) {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// The backend of an open connection.
    pub fn of(conn: &super::Conn) -> Self {
        if conn.backend_name() == "PostgreSQL" {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// How a write transaction begins (see [`super::Db::begin`]).
    pub fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            // The advisory lock every PostgreSQL write transaction holds: what SQLite's one
            // writer is to a process, this is to every replica sharing the database. Its key
            // is "jitgate" in ASCII. The function is in FROM so that its void result is not
            // a column the Any driver must decode.
            Backend::Postgres => "BEGIN; SELECT 1 FROM pg_advisory_xact_lock(29952296202892389)",
        }
    }

    /// `column` where SQLite must not pick an index on it (`+column`, SQLite's way of
    /// saying "not this index"); PostgreSQL has no such hint and needs none.
    pub fn unindexed(self, column: &str) -> String {
        match self {
            Backend::Sqlite => format!("+{column}"),
            Backend::Postgres => column.to_string(),
        }
    }

    /// What a claiming sub-select ends with, so replicas claiming at once skip each
    /// other's rows instead of claiming them twice. SQLite has one writer at a time.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// The column that orders a request's decisions made in the same millisecond as they
    /// were stored.
    pub fn decisions_insertion_order(self) -> &'static str {
        match self {
            Backend::Sqlite => "rowid",
            Backend::Postgres => "seq",
        }
    }
}

/// `text` with each `$N` placeholder written `?`. Only for statements whose placeholders
/// appear once each, in order (as [`super::Sql`] writes them); the only `$` followed by a
/// digit in the store's SQL is a placeholder.
pub(super) fn anonymous(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_placeholders_become_anonymous_and_nothing_else_changes() {
        assert_eq!(anonymous("VALUES ($1, $2), ($13, 'a$b')"), "VALUES (?, ?), (?, 'a$b')");
        assert_eq!(anonymous("x = 1"), "x = 1");
    }

    #[test]
    fn the_write_lock_key_is_the_one_begin_takes() {
        let key = i64::from_be_bytes(*b"\0jitgate");
        assert!(Backend::Postgres.begin_write().contains(&format!("({key})")));
    }
}
