//! How an [`InstanceQuery`] becomes SQL that an index answers: one range
//! scan per statement, so a page costs O(log n + page) whatever the number of
//! stored instances.
//!
//! The index each shape of query uses (see migration 0002):
//!
//! | filters                    | index                                  | order          |
//! | -------------------------- | -------------------------------------- | -------------- |
//! | input (+ anything)         | `(input_hash, name, created_at, id)`   | created, id    |
//! | id prefix (+ no input)     | primary key `id`                       | id             |
//! | name + statuses            | `(name, status, created_at, id)`, one statement per status, merged | created, id |
//! | name                       | `(name, created_at, id)`               | created, id    |
//! | statuses                   | `(status, created_at, id)`, one statement per status, merged | created, id |
//! | time window or nothing     | `(created_at, id)`                     | created, id    |
//!
//! Paging continues with a row-value comparison on the order's columns, so
//! every page starts with an index seek, never with a rescan of the window.
//!
//! Each statement names its index (`INDEXED BY`, SQLite's dialect): without
//! statistics the planner may prefer a worse one (it picked the status index
//! for a name + status query, leaving the name to filter), and if the named
//! index cannot serve the statement SQLite refuses it instead of scanning.

use duro_core::model::{InstanceQuery, Millis, input_hash};

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// An integer.
    Int(i64),
    /// A text.
    Text(String),
}

/// One statement of a listing, with `?N` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL.
    pub sql: String,
    /// Its arguments, `?1` first.
    pub args: Vec<SqlValue>,
}

impl Statement {
    /// The same statement in PostgreSQL's dialect: `$N` placeholders, and no
    /// `INDEXED BY` (PostgreSQL's planner picks the index; its query-plan
    /// test checks it does).
    ///
    /// ```
    /// use duro_store_sql::listing::Statement;
    /// let sqlite = Statement {
    ///     sql: "SELECT id FROM instances INDEXED BY instances_by_name WHERE name = ?1 LIMIT ?2".into(),
    ///     args: vec![],
    /// };
    /// assert_eq!(
    ///     sqlite.to_postgres().sql,
    ///     "SELECT id FROM instances WHERE name = $1 LIMIT $2"
    /// );
    /// ```
    pub fn to_postgres(&self) -> Statement {
        const HINT: &str = " INDEXED BY ";
        let mut sql = self.sql.replace('?', "$");
        while let Some(at) = sql.find(HINT) {
            let rest = &sql[at + HINT.len()..];
            let end = rest.find(' ').map_or(sql.len(), |i| at + HINT.len() + i);
            sql.replace_range(at..end, "");
        }
        Statement {
            sql,
            args: self.args.clone(),
        }
    }
}

/// Several statements as one, `(a) UNION ALL (b) …`, each one's
/// placeholders numbered after the arguments of those before it. One
/// statement reads one snapshot: an instance that changes status while a
/// listing split by status runs is then found exactly once, never twice
/// (left by one statement, met again by the next) nor not at all. Each
/// branch keeps its own index range scan.
pub fn union_all(statements: &[Statement]) -> Statement {
    if let [one] = statements {
        return one.clone();
    }
    let mut sql = String::new();
    let mut args = Vec::new();
    for statement in statements {
        if !sql.is_empty() {
            sql.push_str(" UNION ALL ");
        }
        sql.push('(');
        sql.push_str(&renumbered(&statement.sql, args.len()));
        sql.push(')');
        args.extend(statement.args.iter().cloned());
    }
    Statement { sql, args }
}

/// `sql` with every `?N` placeholder made `?(N + offset)`.
fn renumbered(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            out.push_str(&(n + offset).to_string());
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// `columns` (a store's instance columns) with the input column read as
/// the JSON `null` instead, for a listing that does not show inputs.
///
/// ```
/// let columns = duro_store_sql::listing::without_input("id, name, status, input, output");
/// assert_eq!(columns, "id, name, status, 'null' AS input, output");
/// ```
pub fn without_input(columns: &str) -> String {
    columns
        .split(',')
        .map(|column| match column.trim() {
            "input" => column.replacen("input", "'null' AS input", 1),
            _ => column.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Which columns a listing is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `(created_at, id)`.
    Created,
    /// `id` alone (listings by id prefix).
    Id,
}

impl Order {
    /// The sort key of a row in this order.
    pub fn key(self, created_at: Millis, id: &str) -> (Millis, &str) {
        match self {
            Order::Created => (created_at, id),
            Order::Id => (0, id),
        }
    }
}

/// The statements that answer `query`, each returning at most `limit` rows
/// of `columns` already in order; the caller merges them (when there are
/// several) and keeps the first `limit`.
pub fn statements(query: &InstanceQuery, columns: &str, limit: usize) -> (Vec<Statement>, Order) {
    let order = if query.input.is_none() && query.id_prefix.is_some() {
        Order::Id
    } else {
        Order::Created
    };
    // A status filter is split into one statement per status only where an
    // index leads with it; elsewhere it filters the rows the index found.
    let split_statuses = query.input.is_none() && query.id_prefix.is_none();
    let per_status: Vec<Option<&str>> = if split_statuses && !query.statuses.is_empty() {
        let mut names: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let statements = per_status
        .into_iter()
        .map(|status| statement(query, columns, limit, order, status, split_statuses))
        .collect();
    (statements, order)
}

fn statement(
    query: &InstanceQuery,
    columns: &str,
    limit: usize,
    order: Order,
    status: Option<&str>,
    split_statuses: bool,
) -> Statement {
    let index = if query.input.is_some() {
        "instances_by_input"
    } else if query.id_prefix.is_some() {
        "sqlite_autoindex_instances_1"
    } else {
        match (query.name.is_some(), status.is_some()) {
            (true, true) => "instances_by_name_status",
            (true, false) => "instances_by_name",
            (false, true) => "instances_by_status",
            (false, false) => "instances_by_created",
        }
    };
    let mut s = Builder {
        sql: format!("SELECT {columns} FROM instances INDEXED BY {index} WHERE 1 = 1"),
        args: Vec::new(),
    };
    // Equality columns first, in the order of the index they select.
    if let Some(input) = &query.input {
        s.push(" AND input_hash = ?", SqlValue::Int(input_hash(input)));
        s.push(" AND input = ?", SqlValue::Text(input.clone()));
    }
    if let Some(name) = &query.name {
        s.push(" AND name = ?", SqlValue::Text(name.clone()));
    }
    if let Some(status) = status {
        s.push(" AND status = ?", SqlValue::Text(status.to_string()));
    } else if !split_statuses && !query.statuses.is_empty() {
        s.sql.push_str(" AND status IN (");
        for (i, status) in query.statuses.iter().enumerate() {
            if i > 0 {
                s.sql.push_str(", ");
            }
            s.push("?", SqlValue::Text(status.as_str().to_string()));
        }
        s.sql.push(')');
    }
    // Entities and orchestration instances share the table; a listing
    // holds one kind (this filters the rows the index finds).
    s.sql.push_str(if query.entities {
        " AND substr(id, 1, 1) = '@'"
    } else {
        " AND substr(id, 1, 1) <> '@'"
    });
    // The bounds of the order's columns. A continuation replaces the bound
    // on its side of the range (it lies inside the range, having come from
    // it), so that the index seek starts at the continuation and not at the
    // start of the window: SQLite seeks on one lower bound only.
    let newest_first = query.newest_first;
    let (mut id_low, mut id_high) = match &query.id_prefix {
        Some(prefix) => (Some(prefix.clone()), prefix_upper_bound(prefix)),
        None => (None, None),
    };
    let (mut created_low, mut created_high) = (query.created_from, query.created_to);
    let mut after = query.after.clone();
    if let Some((created, id)) = &after {
        match order {
            Order::Created => {
                let inside = if newest_first {
                    created_high.is_none_or(|to| *created <= to)
                } else {
                    created_low.is_none_or(|from| *created >= from)
                };
                match (inside, newest_first) {
                    (true, true) => created_high = None,
                    (true, false) => created_low = None,
                    // A position outside the window: the window decides.
                    (false, _) => after = None,
                }
            }
            Order::Id => {
                let inside = if newest_first {
                    id_high.as_ref().is_none_or(|upper| id <= upper)
                } else {
                    id_low.as_ref().is_none_or(|prefix| id >= prefix)
                };
                match (inside, newest_first) {
                    (true, true) => id_high = None,
                    (true, false) => id_low = None,
                    (false, _) => after = None,
                }
            }
        }
    }
    if let Some(low) = id_low {
        s.push(" AND id >= ?", SqlValue::Text(low));
    }
    if let Some(high) = id_high {
        s.push(" AND id < ?", SqlValue::Text(high));
    }
    if let Some(from) = created_low {
        s.push(" AND created_at >= ?", SqlValue::Int(from as i64));
    }
    if let Some(to) = created_high {
        s.push(" AND created_at <= ?", SqlValue::Int(to as i64));
    }
    let (cmp, dir) = if newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((created, id)) = after {
        match order {
            Order::Created => {
                s.push(
                    &format!(" AND (created_at, id) {cmp} (?"),
                    SqlValue::Int(created as i64),
                );
                s.push(", ?)", SqlValue::Text(id));
            }
            Order::Id => s.push(&format!(" AND id {cmp} ?"), SqlValue::Text(id)),
        }
    }
    match order {
        Order::Created => s
            .sql
            .push_str(&format!(" ORDER BY created_at {dir}, id {dir}")),
        Order::Id => s.sql.push_str(&format!(" ORDER BY id {dir}")),
    }
    s.push(" LIMIT ?", SqlValue::Int(limit.max(1) as i64));
    Statement {
        sql: s.sql,
        args: s.args,
    }
}

#[derive(Default)]
struct Builder {
    sql: String,
    args: Vec<SqlValue>,
}

impl Builder {
    /// Append `clause`, numbering its one `?` after the arguments so far.
    fn push(&mut self, clause: &str, value: SqlValue) {
        self.args.push(value);
        self.sql
            .push_str(&clause.replacen('?', &format!("?{}", self.args.len()), 1));
    }
}

/// The smallest string above every string that starts with `prefix` (none
/// when there is no such string): "ab" gives "ac". UTF-8 orders like code
/// points, so this bounds a byte-wise (BINARY) range scan.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Merge the rows of several ordered statements into the first `limit` of
/// them, in the listing's order.
pub fn merge<T>(
    mut rows: Vec<T>,
    newest_first: bool,
    limit: usize,
    key: impl Fn(&T) -> (Millis, &str),
) -> Vec<T> {
    rows.sort_by(|a, b| {
        let ord = key(a).cmp(&key(b));
        if newest_first { ord.reverse() } else { ord }
    });
    rows.truncate(limit);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use duro_core::model::RuntimeStatus;

    #[test]
    fn a_union_numbers_each_statements_arguments_after_the_ones_before() {
        let one = |sql: &str, n: i64| Statement {
            sql: sql.into(),
            args: vec![SqlValue::Int(n), SqlValue::Int(n + 1)],
        };
        let union = union_all(&[
            one("SELECT id FROM t WHERE a = ?1 LIMIT ?2", 1),
            one("SELECT id FROM t WHERE a = ?1 LIMIT ?2", 10),
            one("SELECT id FROM t WHERE a = ?1 LIMIT ?2", 100),
        ]);
        assert_eq!(
            union.sql,
            "(SELECT id FROM t WHERE a = ?1 LIMIT ?2) UNION ALL \
             (SELECT id FROM t WHERE a = ?3 LIMIT ?4) UNION ALL \
             (SELECT id FROM t WHERE a = ?5 LIMIT ?6)"
        );
        assert_eq!(union.args.len(), 6);
        assert_eq!(union.args[4], SqlValue::Int(100));
        assert_eq!(
            union.to_postgres().sql,
            "(SELECT id FROM t WHERE a = $1 LIMIT $2) UNION ALL \
             (SELECT id FROM t WHERE a = $3 LIMIT $4) UNION ALL \
             (SELECT id FROM t WHERE a = $5 LIMIT $6)"
        );
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
    }

    #[test]
    fn one_statement_per_status_where_an_index_leads_with_it() {
        let query = InstanceQuery {
            statuses: vec![RuntimeStatus::Running, RuntimeStatus::Completed],
            name: Some("Workflow".into()),
            ..Default::default()
        };
        let (statements, order) = statements(&query, "id", 10);
        assert_eq!(order, Order::Created);
        assert_eq!(statements.len(), 2);
        let by_input = InstanceQuery {
            input: Some("\"x\"".into()),
            ..query
        };
        assert_eq!(statements_len(&by_input), 1);
    }

    fn statements_len(query: &InstanceQuery) -> usize {
        statements(query, "id", 10).0.len()
    }
}
