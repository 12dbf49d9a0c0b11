//! SeaORM entities of examsync, written by hand ("entity first").
//!
//! The tables are created by the `migration` crate; every uniqueness rule that the
//! sync and package rules depend on lives there as a database constraint.

pub mod access_grant;
pub mod attempt;
pub mod enums;
pub mod idempotency_record;
pub mod ids;
pub mod media_object;
pub mod package_dictionary;
pub mod package_media;
pub mod package_question;
pub mod question;
pub mod question_media;
pub mod session_answer;
pub mod test_package;
pub mod test_session;
pub mod user;

pub use enums::{MediaContentType, MediaPlacement, QuestionStatus, SessionMode, SessionStatus};
pub use ids::{
    AnswerId, AttemptId, ClientAttemptId, GrantId, IdempotencyKey, InvalidHash, MediaHash,
    OfflineSessionId, PackageId, PayloadHash, QuestionId, Role, SessionId, UserId, VersionHash,
};

pub mod prelude {
    pub use super::access_grant::Entity as AccessGrant;
    pub use super::attempt::Entity as Attempt;
    pub use super::idempotency_record::Entity as IdempotencyRecord;
    pub use super::media_object::Entity as MediaObject;
    pub use super::package_dictionary::Entity as PackageDictionary;
    pub use super::package_media::Entity as PackageMedia;
    pub use super::package_question::Entity as PackageQuestion;
    pub use super::question::Entity as Question;
    pub use super::question_media::Entity as QuestionMedia;
    pub use super::session_answer::Entity as SessionAnswer;
    pub use super::test_package::Entity as TestPackage;
    pub use super::test_session::Entity as TestSession;
    pub use super::user::Entity as User;
}
