//! How the report writes an LSN in JSON: as PostgreSQL prints it (`X/X`),
//! never as a number. Shared by the report and the divergent ranges, so that
//! neither of those modules needs the other for it.

use serde::Serializer;

use crate::lsn::Lsn;

pub(super) fn ser_lsn<S: Serializer>(v: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

pub(super) fn ser_opt_lsn<S: Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => ser_lsn(l, s),
        None => s.serialize_none(),
    }
}
