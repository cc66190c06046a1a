//! `enos-signer registry copy --from OLD.toml --to NEW.toml`: every record
//! of one registry into another (redb → PostgreSQL, and back), by
//! [`enos_registry::copy`].
//!
//! Secrets stay sealed: records are copied byte for byte and no custody
//! is built, so both configs must name the same custody (the same key or
//! token), which this module checks first; changing custody is
//! `custody migrate`.

use enos_registry::copy::{self, CopyReport};

use crate::{
    SignerConfig,
    config::CustodyConfig,
    error::{Result, SignerError},
};

/// Copies every record of `from`'s registry into `to`'s. `progress` is
/// called after each page with the totals so far.
pub async fn copy(
    from: &SignerConfig,
    to: &SignerConfig,
    progress: impl FnMut(&CopyReport),
) -> Result<CopyReport> {
    same_custody(&from.custody, &to.custody)?;
    let (source, destination) = copy::open_pair(&from.registry, &to.registry)?;
    Ok(copy::copy(source.as_ref(), destination.as_ref(), progress).await?)
}

/// Refuses to copy between custodies: a sealed secret opens only under
/// the custody that sealed it. Software custodies may name their key by
/// different paths: then the keys themselves must be equal.
fn same_custody(from: &CustodyConfig, to: &CustodyConfig) -> Result<()> {
    if from == to {
        return Ok(());
    }
    if let (
        CustodyConfig::Software { master_key_file: a },
        CustodyConfig::Software { master_key_file: b },
    ) = (from, to)
    {
        // Both files are the operator's own: no timing to hide.
        if *crate::key_file::load(a)? == *crate::key_file::load(b)? {
            return Ok(());
        }
    }
    Err(SignerError::Config(
        "registry copy keeps secrets sealed, so both configs must name the same custody \
         (the same master key or token); to change custody use `enos-signer custody migrate`"
            .into(),
    ))
}
