//! Internally tagged enums (`{"eventType": "TimerFired", "task": 3, ...}`)
//! that deserialize without serde's buffering.
//!
//! serde's derived `#[serde(tag = "...")]` deserializer first copies every
//! entry of the map into a buffer and then reads the variant out of it: a
//! 10,000-event history spent about three times longer decoding than an
//! externally tagged one does. [`tagged_enum!`](crate::tagged_enum)
//! declares the enum with serde's derived serializer (unchanged output) and
//! a deserializer that reads the tag when it is the first key, as every
//! value serialized by serde is, and hands the rest of the map straight to
//! the variant's fields. A map whose tag comes later (a hand-written value,
//! a `serde_json::Value` with sorted keys) is buffered as before.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, VariantAccess,
    Visitor,
};

/// Declare an internally tagged enum of struct variants: the enum itself
/// with `#[derive(Serialize)]` and `#[serde(tag = $tag)]` (plus
/// `rename_all` if given), and a `Deserialize` that reads the same form
/// without buffering it.
///
/// ```
/// duro_core::tagged_enum! {
///     tag = "kind", rename_all = "camelCase";
///     #[derive(Debug, PartialEq)]
///     pub enum Shape {
///         Circle { radius: u32 },
///         Square { side: u32, #[serde(default)] label: Option<String> },
///     }
/// }
/// let square: Shape = serde_json::from_str(r#"{"kind": "square", "side": 2}"#).unwrap();
/// assert_eq!(square, Shape::Square { side: 2, label: None });
/// assert_eq!(
///     serde_json::to_string(&Shape::Circle { radius: 1 }).unwrap(),
///     r#"{"kind":"circle","radius":1}"#
/// );
/// ```
#[macro_export]
macro_rules! tagged_enum {
    (
        tag = $tag:literal $(, rename_all = $rename:literal)?;
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident {
                    $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
                }
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(serde::Serialize)]
        #[serde(tag = $tag $(, rename_all = $rename)?)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant { $( $(#[$fmeta])* $field: $ty ),* }
            ),*
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // The same variants, externally tagged: serde reads those
                // field by field from the map the tag came in.
                #[derive(serde::Deserialize)]
                $( #[serde(rename_all = $rename)] )?
                enum Wire {
                    $(
                        $(#[$vmeta])*
                        $variant { $( $(#[$fmeta])* $field: $ty ),* }
                    ),*
                }
                $crate::tagged::deserialize::<D, Wire>(deserializer, $tag).map(|wire| match wire {
                    $( Wire::$variant { $($field),* } => $name::$variant { $($field),* } ),*
                })
            }
        }
    };
}

/// Read an internally tagged map as the externally tagged `W` (see the
/// module's header). Used by [`tagged_enum!`](crate::tagged_enum).
pub fn deserialize<'de, D, W>(deserializer: D, tag: &'static str) -> Result<W, D::Error>
where
    D: Deserializer<'de>,
    W: de::Deserialize<'de>,
{
    deserializer.deserialize_map(TaggedMap {
        tag,
        wire: PhantomData,
    })
}

struct TaggedMap<W> {
    tag: &'static str,
    wire: PhantomData<W>,
}

impl<'de, W: de::Deserialize<'de>> Visitor<'de> for TaggedMap<W> {
    type Value = W;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a map with a {:?} key", self.tag)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<W, A::Error> {
        let Some(first) = map.next_key::<Key<'de>>()? else {
            return Err(de::Error::missing_field(self.tag));
        };
        if first.as_str() == self.tag {
            let variant = map.next_value::<Key<'de>>()?;
            return W::deserialize(Variant { variant, map });
        }
        // The tag comes later: buffer the entries and find it.
        let mut entries = serde_json::Map::new();
        entries.insert(first.into_owned(), map.next_value()?);
        while let Some(key) = map.next_key::<String>()? {
            entries.insert(key, map.next_value()?);
        }
        let variant = match entries.remove(self.tag) {
            Some(serde_json::Value::String(variant)) => variant,
            Some(other) => {
                return Err(de::Error::invalid_type(
                    de::Unexpected::Other(&other.to_string()),
                    &"a variant name",
                ));
            }
            None => return Err(de::Error::missing_field(self.tag)),
        };
        let rest = de::value::MapDeserializer::new(entries.into_iter());
        W::deserialize(Variant {
            variant: Key::Owned(variant),
            map: rest,
        })
        .map_err(de::Error::custom)
    }
}

/// A key or a variant name, borrowed from the input when it can be.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self {
            Key::Borrowed(s) => s.to_string(),
            Key::Owned(s) => s,
        }
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The variant named by the tag, with the rest of its map: what an
/// externally tagged enum's deserializer asks for.
struct Variant<'de, M> {
    variant: Key<'de>,
    map: M,
}

impl<'de, M: MapAccess<'de>> Deserializer<'de> for Variant<'de, M> {
    type Error = M::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, M::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, M: MapAccess<'de>> EnumAccess<'de> for Variant<'de, M> {
    type Error = M::Error;
    type Variant = Fields<M>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Fields<M>), M::Error> {
        let name = match self.variant {
            Key::Borrowed(s) => seed.deserialize(de::value::BorrowedStrDeserializer::new(s))?,
            Key::Owned(s) => seed.deserialize(s.into_deserializer())?,
        };
        Ok((name, Fields(self.map)))
    }
}

/// The fields of a struct variant: the rest of the tagged map.
struct Fields<M>(M);

impl<'de, M: MapAccess<'de>> VariantAccess<'de> for Fields<M> {
    type Error = M::Error;

    fn unit_variant(self) -> Result<(), M::Error> {
        Err(de::Error::custom("a tagged variant has fields"))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _: S) -> Result<S::Value, M::Error> {
        Err(de::Error::custom("a tagged variant has named fields"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, M::Error> {
        Err(de::Error::custom("a tagged variant has named fields"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, M::Error> {
        visitor.visit_map(self.0)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Action, HistoryEvent};

    fn events() -> Vec<HistoryEvent> {
        vec![
            HistoryEvent::ExecutionStarted {
                name: "W".into(),
                input: "\"x\\\"y\"".into(),
            },
            HistoryEvent::TaskScheduled {
                task: 1,
                action: Action::CallActivity {
                    name: "A".into(),
                    input: "1".into(),
                    retry: None,
                },
            },
            HistoryEvent::TaskScheduled {
                task: 2,
                action: Action::CreateTimer { fire_at: 5 },
            },
            HistoryEvent::ExecutionTerminated { reason: None },
        ]
    }

    #[test]
    fn serialized_events_read_back_the_same() {
        for event in events() {
            let text = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<HistoryEvent>(&text).unwrap(), event);
            // Through a `Value` (sorted keys: the tag is not always first).
            let value = serde_json::to_value(&event).unwrap();
            assert_eq!(
                serde_json::from_value::<HistoryEvent>(value).unwrap(),
                event
            );
        }
    }

    #[test]
    fn the_tag_may_come_anywhere_and_bad_input_is_named() {
        let late = r#"{"task": 4, "fire_at": 9, "eventType": "TimerFired"}"#;
        assert_eq!(
            serde_json::from_str::<HistoryEvent>(late).unwrap(),
            HistoryEvent::TimerFired {
                task: 4,
                fire_at: 9
            }
        );
        let unknown = serde_json::from_str::<HistoryEvent>(r#"{"eventType": "Nope"}"#);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown variant `Nope`")
        );
        let untagged = serde_json::from_str::<HistoryEvent>(r#"{"task": 4}"#);
        assert!(untagged.unwrap_err().to_string().contains("eventType"));
        let missing = serde_json::from_str::<HistoryEvent>(r#"{"eventType": "TimerFired"}"#);
        assert!(missing.unwrap_err().to_string().contains("missing field"));
        let extra = r#"{"eventType": "TaskCancelled", "task": 1, "later": [1]}"#;
        assert_eq!(
            serde_json::from_str::<HistoryEvent>(extra).unwrap(),
            HistoryEvent::TaskCancelled { task: 1 }
        );
    }
}
