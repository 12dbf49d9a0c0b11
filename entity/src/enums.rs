//! The states stored as text columns, typed end to end: the database value, the Rust value
//! and (with the `graphql` feature) the GraphQL enum value are one and the same name, so an
//! unknown stored value is a read error, never a silent default.
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// How a study session runs. Sync creates TUTOR sessions.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionMode {
    #[sea_orm(string_value = "TUTOR")]
    Tutor,
    #[sea_orm(string_value = "EXAM")]
    Exam,
}

/// Where a study session is in its life: only ACTIVE sessions take new answers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionStatus {
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "SUBMITTED")]
    Submitted,
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
}

/// Editorial state of a question: only PUBLISHED questions go into new packages.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QuestionStatus {
    #[sea_orm(string_value = "DRAFT")]
    Draft,
    #[sea_orm(string_value = "IN_REVIEW")]
    InReview,
    #[sea_orm(string_value = "APPROVED")]
    Approved,
    #[default]
    #[sea_orm(string_value = "PUBLISHED")]
    Published,
}

/// What a package covers: the whole programme, or one year, block or theme of it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PackageScope {
    #[sea_orm(string_value = "PROGRAM")]
    Program,
    #[sea_orm(string_value = "YEAR")]
    Year,
    #[sea_orm(string_value = "BLOCK")]
    Block,
    #[sea_orm(string_value = "THEME")]
    Theme,
}

impl PackageScope {
    /// Every scope, in the order error messages list them.
    pub const ALL: [PackageScope; 4] = [
        PackageScope::Program,
        PackageScope::Year,
        PackageScope::Block,
        PackageScope::Theme,
    ];

    /// The wire and stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PackageScope::Program => "PROGRAM",
            PackageScope::Year => "YEAR",
            PackageScope::Block => "BLOCK",
            PackageScope::Theme => "THEME",
        }
    }

    /// Parses a scope name, in any case and with surrounding blanks (query strings and CLI
    /// flags are typed by people).
    pub fn parse(s: &str) -> Option<PackageScope> {
        let s = s.trim();
        PackageScope::ALL
            .into_iter()
            .find(|scope| scope.as_str().eq_ignore_ascii_case(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_parse_in_any_case() {
        for scope in PackageScope::ALL {
            assert_eq!(PackageScope::parse(scope.as_str()), Some(scope));
            assert_eq!(
                PackageScope::parse(&format!(" {} ", scope.as_str().to_lowercase())),
                Some(scope)
            );
            // The stored value is the wire name.
            assert_eq!(scope.to_value(), scope.as_str());
        }
        assert_eq!(PackageScope::parse("COURSE"), None);
        assert_eq!(PackageScope::parse(""), None);
    }
}

/// Where a question shows a media object: its stem, its explanation, or one option.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MediaPlacement {
    #[sea_orm(string_value = "STEM")]
    Stem,
    #[sea_orm(string_value = "EXPLANATION")]
    Explanation,
    #[sea_orm(string_value = "OPTION_A")]
    OptionA,
    #[sea_orm(string_value = "OPTION_B")]
    OptionB,
    #[sea_orm(string_value = "OPTION_C")]
    OptionC,
    #[sea_orm(string_value = "OPTION_D")]
    OptionD,
    #[sea_orm(string_value = "OPTION_E")]
    OptionE,
}

impl MediaPlacement {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            MediaPlacement::Stem => "STEM",
            MediaPlacement::Explanation => "EXPLANATION",
            MediaPlacement::OptionA => "OPTION_A",
            MediaPlacement::OptionB => "OPTION_B",
            MediaPlacement::OptionC => "OPTION_C",
            MediaPlacement::OptionD => "OPTION_D",
            MediaPlacement::OptionE => "OPTION_E",
        }
    }

    /// The 0-based option an `OPTION_*` placement names.
    pub fn option_index(self) -> Option<usize> {
        match self {
            MediaPlacement::Stem | MediaPlacement::Explanation => None,
            MediaPlacement::OptionA => Some(0),
            MediaPlacement::OptionB => Some(1),
            MediaPlacement::OptionC => Some(2),
            MediaPlacement::OptionD => Some(3),
            MediaPlacement::OptionE => Some(4),
        }
    }
}

/// The media types a question may carry, decided from the bytes (never from a header).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum MediaContentType {
    #[sea_orm(string_value = "image/png")]
    #[serde(rename = "image/png")]
    #[cfg_attr(feature = "openapi", schema(rename = "image/png"))]
    Png,
    #[sea_orm(string_value = "image/jpeg")]
    #[serde(rename = "image/jpeg")]
    #[cfg_attr(feature = "openapi", schema(rename = "image/jpeg"))]
    Jpeg,
    #[sea_orm(string_value = "image/webp")]
    #[serde(rename = "image/webp")]
    #[cfg_attr(feature = "openapi", schema(rename = "image/webp"))]
    Webp,
    #[sea_orm(string_value = "image/gif")]
    #[serde(rename = "image/gif")]
    #[cfg_attr(feature = "openapi", schema(rename = "image/gif"))]
    Gif,
    #[sea_orm(string_value = "audio/mpeg")]
    #[serde(rename = "audio/mpeg")]
    #[cfg_attr(feature = "openapi", schema(rename = "audio/mpeg"))]
    Mpeg,
    #[sea_orm(string_value = "audio/ogg")]
    #[serde(rename = "audio/ogg")]
    #[cfg_attr(feature = "openapi", schema(rename = "audio/ogg"))]
    Ogg,
}

impl MediaContentType {
    /// The MIME type, as `Content-Type` and the wire carry it.
    pub const fn as_str(self) -> &'static str {
        match self {
            MediaContentType::Png => "image/png",
            MediaContentType::Jpeg => "image/jpeg",
            MediaContentType::Webp => "image/webp",
            MediaContentType::Gif => "image/gif",
            MediaContentType::Mpeg => "audio/mpeg",
            MediaContentType::Ogg => "audio/ogg",
        }
    }

    pub fn parse(mime: &str) -> Option<Self> {
        [
            MediaContentType::Png,
            MediaContentType::Jpeg,
            MediaContentType::Webp,
            MediaContentType::Gif,
            MediaContentType::Mpeg,
            MediaContentType::Ogg,
        ]
        .into_iter()
        .find(|t| t.as_str() == mime)
    }

    /// Images carry dimensions; sounds do not.
    pub const fn is_image(self) -> bool {
        !matches!(self, MediaContentType::Mpeg | MediaContentType::Ogg)
    }
}
