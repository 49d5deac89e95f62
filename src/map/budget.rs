//! The alias expansion limit (SPEC §8): YAML anchors and aliases let a small file describe a huge
//! document (an "alias bomb": a list of lists, each aliased many times), and serde_yaml expands
//! every alias it meets as it deserializes. A 421 KB map took 2.3 GB that way.
//!
//! The map is deserialized through `Budgeted`, a pass-through deserializer that charges one unit
//! per node, plus the bytes of each scalar, as the node reaches the schema's visitors, and fails
//! as soon as the budget is spent: before the expanded document is built, in the same single pass
//! (a second parse would double the load time of a 100,000-reflex map). A file without aliases
//! never comes near the budget, since every node and every scalar byte takes at least one byte of
//! text; aliases may add `ALIAS_ALLOWANCE` units beyond that.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde::de::{Deserialize, VariantAccess};

/// What aliases may add to a document, in units (a node, or a byte of a scalar): room for every
/// anchor a person writes by hand, nothing near what a bomb needs.
pub const ALIAS_ALLOWANCE: u64 = 1 << 20;

/// Text-to-units factor: a document without aliases spends fewer units than this many times its
/// length in bytes (at most one node per byte, plus the scalar's bytes, with margin).
const UNITS_PER_BYTE: u64 = 4;

/// Deserializes `T` from the YAML `source`, failing with the alias expansion error once the
/// document has cost more than its text can account for plus `ALIAS_ALLOWANCE`.
pub fn from_str<'de, T: Deserialize<'de>>(source: &'de str) -> Result<T, serde_yaml::Error> {
    let limit = (source.len() as u64)
        .saturating_mul(UNITS_PER_BYTE)
        .saturating_add(ALIAS_ALLOWANCE);
    from_str_within(source, limit)
}

fn from_str_within<'de, T: Deserialize<'de>>(
    source: &'de str,
    limit: u64,
) -> Result<T, serde_yaml::Error> {
    let budget = Budget {
        left: Cell::new(limit),
        limit,
    };
    T::deserialize(Budgeted {
        inner: serde_yaml::Deserializer::from_str(source),
        budget: &budget,
    })
}

/// Units left to spend, shared by every wrapper of one deserialization.
struct Budget {
    left: Cell<u64>,
    limit: u64,
}

impl Budget {
    /// Spends `units`, or fails with the error serde_yaml places at the current node.
    fn charge<E: de::Error>(&self, units: u64) -> Result<(), E> {
        match self.left.get().checked_sub(units) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "alias expansion limit: anchors and aliases expand the map beyond {} nodes and \
                 bytes (four times the file's size plus {ALIAS_ALLOWANCE}); is it an alias bomb?",
                self.limit
            ))),
        }
    }

    fn charge_str<E: de::Error>(&self, text: &str) -> Result<(), E> {
        self.charge(1 + text.len() as u64)
    }
}

/// A deserializer that hands every visitor a `Counting` one.
struct Budgeted<'b, D> {
    inner: D,
    budget: &'b Budget,
}

/// A visitor that charges the budget for each node before its own visitor sees it.
struct Counting<'b, V> {
    inner: V,
    budget: &'b Budget,
}

/// A seed whose deserializer is `Budgeted`: what sequences, maps and enums hand out.
struct CountingSeed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for CountingSeed<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Budgeted {
            inner: deserializer,
            budget: self.budget,
        })
    }
}

/// Forwards each `deserialize_*` method to the inner deserializer with a `Counting` visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Counting { inner: visitor, budget: self.budget })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Budgeted<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_seq();
        deserialize_map();
        deserialize_identifier();
        deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! charge_one {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
            self.budget.charge::<E>(1)?;
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Counting<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    charge_one!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
    );

    fn visit_str<E: de::Error>(self, value: &str) -> Result<V::Value, E> {
        self.budget.charge_str::<E>(value)?;
        self.inner.visit_str(value)
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<V::Value, E> {
        self.budget.charge_str::<E>(value)?;
        self.inner.visit_borrowed_str(value)
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<V::Value, E> {
        self.budget.charge_str::<E>(&value)?;
        self.inner.visit_string(value)
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<V::Value, E> {
        self.budget.charge::<E>(1 + value.len() as u64)?;
        self.inner.visit_bytes(value)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, value: &'de [u8]) -> Result<V::Value, E> {
        self.budget.charge::<E>(1 + value.len() as u64)?;
        self.inner.visit_borrowed_bytes(value)
    }

    fn visit_byte_buf<E: de::Error>(self, value: Vec<u8>) -> Result<V::Value, E> {
        self.budget.charge::<E>(1 + value.len() as u64)?;
        self.inner.visit_byte_buf(value)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.budget.charge::<E>(1)?;
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.budget.charge::<E>(1)?;
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Budgeted {
            inner: deserializer,
            budget: self.budget,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Budgeted {
            inner: deserializer,
            budget: self.budget,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.budget.charge::<A::Error>(1)?;
        self.inner.visit_seq(Counting {
            inner: seq,
            budget: self.budget,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.budget.charge::<A::Error>(1)?;
        self.inner.visit_map(Counting {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.budget.charge::<A::Error>(1)?;
        self.inner.visit_enum(Counting {
            inner: data,
            budget: self.budget,
        })
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Counting<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(CountingSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Counting<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(CountingSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(CountingSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'b, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Counting<'b, A> {
    type Error = A::Error;
    type Variant = Counting<'b, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let seed = CountingSeed {
            inner: seed,
            budget: self.budget,
        };
        let (value, variant) = self.inner.variant_seed(seed)?;
        let variant = Counting {
            inner: variant,
            budget: self.budget,
        };
        Ok((value, variant))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Counting<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(CountingSeed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        self.inner.tuple_variant(
            len,
            Counting {
                inner: visitor,
                budget,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        self.inner.struct_variant(
            fields,
            Counting {
                inner: visitor,
                budget,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    /// A list of `width` scalars anchored once, then aliased `aliases` times: small text, a
    /// document of `width * aliases` nodes.
    fn flat_bomb(width: usize, aliases: usize) -> String {
        let mut text = String::from("big: &b [");
        text.push_str(&vec!["x"; width].join(", "));
        text.push_str("]\ncopies: [");
        text.push_str(&vec!["*b"; aliases].join(", "));
        text.push_str("]\n");
        text
    }

    /// The billion laughs: each level aliases the one before it `width` times.
    fn laughs(levels: usize, width: usize) -> String {
        let mut text = format!("l0: &l0 [{}]\n", vec!["lol"; width].join(", "));
        for level in 1..levels {
            let items = vec![format!("*l{}", level - 1); width].join(", ");
            let _ = writeln!(text, "l{level}: &l{level} [{items}]");
        }
        text
    }

    fn expansion_error(text: &str) -> serde_yaml::Error {
        from_str::<serde_json::Value>(text).expect_err("the bomb was expanded")
    }

    #[test]
    fn a_flat_alias_bomb_is_refused_with_a_position() {
        // 7 KB of text that would expand to 2 million nodes.
        let err = expansion_error(&flat_bomb(2_000, 1_000));
        let message = err.to_string();
        // The path names the alias being expanded; the position is in the anchored node.
        assert!(message.starts_with("copies["), "{message}");
        assert!(
            message.contains(
                "alias expansion limit: anchors and aliases expand the map beyond 1088648 nodes \
                 and bytes (four times the file's size plus 1048576); is it an alias bomb?"
            ),
            "{message}"
        );
        assert_eq!(err.location().expect("a position").line(), 1);
    }

    #[test]
    fn nested_aliases_are_refused() {
        // serde_yaml's own limit (each alias followed at most 100 times per event of the text)
        // lets these expand to 100,000 times their size; the budget stops them first.
        let message = expansion_error(&laughs(4, 100)).to_string();
        assert!(message.contains("alias expansion limit"), "{message}");
    }

    #[test]
    fn anchors_within_the_allowance_are_expanded() {
        let value: serde_json::Value =
            from_str("base: &b {unit: nginx, tries: 3}\nweb: *b\napi: *b\nname: &n x\nalso: *n\n")
                .unwrap();
        assert_eq!(value["api"]["unit"], "nginx");
        assert_eq!(value["also"], "x");
        // A bomb small enough to fit the allowance is just a document.
        let value: serde_json::Value = from_str(&flat_bomb(1_000, 100)).unwrap();
        assert_eq!(value["copies"].as_array().unwrap().len(), 100);
    }

    #[test]
    fn documents_without_aliases_fit_in_their_text_alone() {
        // The densest texts there are: more than a node per byte, or all scalar bytes. Each fits
        // in `UNITS_PER_BYTE` units per byte, without the allowance.
        let dense = [
            format!("[{}]", "[],".repeat(10_000)),
            format!("{{{}}}", "k,".repeat(10_000)),
            format!("[{}]", "{k},".repeat(10_000)),
            format!("[{}]", "a: ,".repeat(10_000)),
            "-\n".repeat(10_000),
            format!("[{}]", "\"\",".repeat(10_000)),
            format!("x: {}", "y".repeat(100_000)),
        ];
        for text in dense {
            let limit = text.len() as u64 * UNITS_PER_BYTE;
            if let Err(err) = from_str_within::<serde_json::Value>(&text, limit) {
                panic!("{}…: {err}", &text[..20]);
            }
        }
    }
}
