//! The `TRANSLATED` trie: remote prefixes whose flows the kernel counts per connection (Service
//! CIDRs, addresses conntrack showed being rewritten, the node's own addresses).

use agent_common::{TranslatedKey, MAP_TRANSLATED};
use aya::maps::{lpm_trie, LpmTrie, MapData};

use crate::{kernel::KernelError, vocab::Cidr};

/// The kernel's `TRANSLATED` prefixes: remotes whose flows are counted per connection.
pub struct TranslatedTrie {
    pub(super) trie: LpmTrie<MapData, TranslatedKey, u8>,
}

/// The trie's key for a prefix: the family word is always matched, then the prefix's bits.
pub fn translated_key(cidr: &Cidr) -> lpm_trie::Key<TranslatedKey> {
    let (addr, bits) = cidr.parts();
    let (family, words) = agent_common::addr_words(addr);
    lpm_trie::Key::new(
        agent_common::translated_prefix_len(bits),
        TranslatedKey {
            family: family as u32,
            addr: words,
        },
    )
}

impl TranslatedTrie {
    pub fn insert(&mut self, cidr: &Cidr) -> Result<(), KernelError> {
        self.trie
            .insert(&translated_key(cidr), 1u8, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_TRANSLATED,
                source,
            })
    }

    pub fn remove(&mut self, cidr: &Cidr) -> Result<(), KernelError> {
        self.trie
            .remove(&translated_key(cidr))
            .map_err(|source| KernelError::Map {
                name: MAP_TRANSLATED,
                source,
            })
    }
}
