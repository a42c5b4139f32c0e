//! Jump chains as people write them (`-J`, a fleet file's `jump:`).

use anyhow::anyhow;

/// Parses `user@host:port,host2,[::1]:2222`.
pub fn parse_jump_chain(chain: &str) -> anyhow::Result<Vec<(Option<String>, String, u16)>> {
    let mut hops = Vec::new();
    for hop in chain.split(',') {
        let hop = hop.trim();
        let bad = || anyhow!("bad jump host {hop:?} in -J: expected [user@]host[:port]");
        if hop.is_empty() {
            return Err(bad());
        }
        let (user, rest) = match hop.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(bad()),
            None => (None, hop),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 22,
                None => return Err(bad()),
            };
            (host.to_string(), port)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (rest.to_string(), 22),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        hops.push((user, host, port));
    }
    Ok(hops)
}
