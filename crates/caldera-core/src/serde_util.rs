//! Small serde helpers shared by the modules.

/// Implements `Serialize` (as `Display`) and `Deserialize` (through `FromStr`) for a type whose
/// canonical wire form is its string form. A parse error becomes a custom serde error carrying the
/// type's own message, so the caller sees e.g. `invalid crate id "x": ...`.
macro_rules! string_serde {
    ($ty:ty, $expecting:expr) => {
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                struct V;
                impl ::serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}

pub(crate) use string_serde;

/// Returns the first character of `s` that is a control character, if any.
pub(crate) fn first_control_char(s: &str) -> Option<char> {
    s.chars().find(|c| c.is_control())
}

/// Defines a fieldless enum whose every value has one lowercase string name, with `ALL`,
/// `as_str()`, `Display`, `FromStr` (error type `$err`, naming the accepted values), serde as the
/// string, and (with the `openapi` feature) a string schema listing the values.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident / $err:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident => $s:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string name of this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $s, )+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[doc = concat!("A string that is not a ", $what, ".")]
        #[derive(Debug, Clone, PartialEq, Eq, ::thiserror::Error)]
        #[error("unknown {} {input:?} (expected {})", $what, crate::serde_util::one_of(&[$($s),+]))]
        pub struct $err {
            /// The string as written.
            pub input: String,
        }

        impl ::std::str::FromStr for $name {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $s => Ok($name::$variant), )+
                    _ => Err($err { input: s.to_owned() }),
                }
            }
        }

        crate::serde_util::string_serde!($name, concat!("a ", $what));

        #[cfg(feature = "openapi")]
        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($s),+]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl ::utoipa::ToSchema for $name {}
    };
}

pub(crate) use string_enum;

/// `a, b or c`, for error messages listing accepted values.
pub(crate) fn one_of(values: &[&str]) -> String {
    match values {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Deserializes `T` from a map only. Derived struct impls also accept a sequence (fields by
/// position), which would let `["x", "stable", …]` pass as a spec; wrapping them in `MapOnly`
/// rejects that with "expected a JSON object". Field paths are preserved: the inner
/// deserialization reads the very `MapAccess` the outer deserializer handed over.
pub(crate) struct MapOnly<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(V(std::marker::PhantomData))
            .map(MapOnly)
    }
}
