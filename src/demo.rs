//! `serve --demo`: a realistic demo question bank and published packages, seeded once
//! into an empty database, plus tokens printed on every start.
use entity::{PackageId, UserId};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use uuid::Uuid;

use crate::{
    access::grants::{self, NewGrant},
    app::App,
    auth::{AuthUser, Role, sign_token},
    error::AppResult,
    media::{self, MediaPlacement, draw},
    packages::{self, BuildRequest, ListFilter, PackageScope},
    questions::{self, QuestionInput, QuestionMediaInput, QuestionStatus},
};

/// Fixed ids so that demo tokens keep meaning the same users across restarts.
pub const DEMO_STUDENT: UserId =
    UserId::from_uuid(Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0001));
pub const DEMO_ADMIN: UserId =
    UserId::from_uuid(Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0002));

const YEARS: i32 = 5;
const BLOCKS_PER_YEAR: i32 = 4;
const THEMES_PER_BLOCK: i32 = 5;
const QUESTIONS_PER_THEME: usize = 22;

const SUBJECTS: [&str; 5] = [
    "Anatomy",
    "Physiology",
    "Pharmacology",
    "Pathology",
    "Microbiology",
];
const PATIENTS: [&str; 6] = [
    "A 24-year-old woman",
    "A 67-year-old man",
    "A 9-year-old boy",
    "A 45-year-old teacher",
    "A 32-year-old pregnant woman",
    "An 80-year-old nursing-home resident",
];
const PRESENTATIONS: [&str; 8] = [
    "presents with fever and a productive cough",
    "has crushing retrosternal chest pain",
    "reports polyuria and polydipsia",
    "has sudden weakness of the right arm",
    "complains of epigastric pain after meals",
    "has jaundice and pale stools",
    "has a painless neck swelling",
    "presents with palpitations and weight loss",
];
const QUESTIONS: [&str; 5] = [
    "What is the most likely diagnosis?",
    "Which investigation should be done first?",
    "Which drug is the first-line treatment?",
    "Which structure is most likely affected?",
    "What is the underlying mechanism?",
];
const OPTIONS: [&str; 20] = [
    "Community-acquired pneumonia",
    "Acute myocardial infarction",
    "Type 1 diabetes mellitus",
    "Ischaemic stroke",
    "Peptic ulcer disease",
    "Obstructive jaundice",
    "Thyroid nodule",
    "Graves' disease",
    "Chest radiograph",
    "12-lead ECG",
    "Fasting plasma glucose",
    "CT of the head",
    "Upper GI endoscopy",
    "Abdominal ultrasound",
    "Fine-needle aspiration",
    "Serum TSH",
    "Amoxicillin",
    "Aspirin",
    "Insulin",
    "Alteplase",
];

/// Deterministic demo questions (no randomness: the same bank on every machine).
pub fn demo_questions() -> Vec<QuestionInput> {
    let mut items = Vec::new();
    let mut n: usize = 0;
    for year in 1..=YEARS {
        for b in 1..=BLOCKS_PER_YEAR {
            let block = year * 10 + b;
            for t in 1..=THEMES_PER_BLOCK {
                let theme = block * 10 + t;
                for _ in 0..QUESTIONS_PER_THEME {
                    n += 1;
                    let option_count = 2 + n % 4; // 2..=5 options
                    let options: Vec<String> = (0..option_count)
                        .map(|i| OPTIONS[(n * 7 + i * 3) % OPTIONS.len()].to_owned())
                        .collect();
                    items.push(QuestionInput {
                        id: Some(Uuid::from_u128(0xde40_0000_0000_4000_8000_0000_0000_0000 + n as u128)),
                        stem: format!(
                            "[{} Y{year}·B{block}·T{theme} #{n}] {} {}. {}",
                            SUBJECTS[n % SUBJECTS.len()],
                            PATIENTS[n % PATIENTS.len()],
                            PRESENTATIONS[(n / 3) % PRESENTATIONS.len()],
                            QUESTIONS[(n / 7) % QUESTIONS.len()],
                        ),
                        correct_index: (n % option_count) as i32,
                        options,
                        explanation_md: Some(format!(
                            "**Key point {n}:** compare the options with the *classic* presentation."
                        )),
                        year_id: year,
                        block_id: Some(block),
                        theme_id: Some(theme),
                        cognitive_level: Some(["C1", "C2", "C3"][n % 3].to_owned()),
                        difficulty: Some(["EASY", "MEDIUM", "HARD"][(n / 2) % 3].to_owned()),
                        status: Some(QuestionStatus::Published),
                        media: None,
                    });
                }
            }
        }
    }
    items
}

/// The demo's media, drawn here: an ECG strip, a chest radiograph, a histology slide, and
/// a short (silent) MPEG audio clip standing in for a heart sound.
pub fn demo_media() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "ECG, lead II: regular narrow-complex rhythm",
            draw::ecg_strip(600, 200),
        ),
        ("Chest radiograph, PA view", draw::chest_radiograph(320)),
        ("Histology, H&E stain", draw::histology_slide(256)),
        ("Heart sounds at the apex", draw::silent_mp3(40)),
    ]
}

/// Stores the demo media and attaches it to the first questions of the bank.
async fn with_demo_media(db: &DatabaseConnection) -> AppResult<Vec<QuestionInput>> {
    let mut items = demo_questions();
    let mut stored = Vec::new();
    for (alt, bytes) in demo_media() {
        let (meta, _) = media::store_object(db, None, bytes, media::DEFAULT_MAX_BYTES).await?;
        stored.push((alt, meta.sha256.hex()));
    }
    let reference = |index: usize, placement: MediaPlacement| {
        let (alt, sha256) = &stored[index];
        QuestionMediaInput {
            sha256: sha256.clone(),
            placement,
            alt: Some((*alt).to_owned()),
        }
    };
    let attachments = [
        vec![reference(0, MediaPlacement::Stem)],
        vec![
            reference(1, MediaPlacement::Stem),
            reference(2, MediaPlacement::Explanation),
        ],
        vec![
            reference(3, MediaPlacement::Stem),
            reference(0, MediaPlacement::OptionA),
        ],
    ];
    for (item, media) in items.iter_mut().zip(attachments) {
        item.media = Some(media);
    }
    Ok(items)
}

/// Seeds the demo bank and packages when the database holds no questions yet.
/// Returns whether it seeded.
pub async fn seed_if_empty(db: &DatabaseConnection) -> AppResult<bool> {
    if entity::question::Entity::find().count(db).await? > 0 {
        return Ok(false);
    }
    questions::import_questions(db, with_demo_media(db).await?).await?;
    let mut builds = vec![BuildRequest {
        name: "Whole programme".into(),
        description: Some("Every published question".into()),
        scope: PackageScope::Program,
        year_id: None,
        block_id: None,
        theme_id: None,
        publish: true,
        created_by: Some(DEMO_ADMIN),
    }];
    for year in 1..=YEARS {
        builds.push(BuildRequest {
            name: format!("Year {year}"),
            description: Some(format!("All published questions of year {year}")),
            scope: PackageScope::Year,
            year_id: Some(year),
            block_id: None,
            theme_id: None,
            publish: true,
            created_by: Some(DEMO_ADMIN),
        });
        let block = year * 10 + 1;
        builds.push(BuildRequest {
            name: format!("Year {year}, block {block}"),
            description: None,
            scope: PackageScope::Block,
            year_id: Some(year),
            block_id: Some(block),
            theme_id: None,
            publish: true,
            created_by: Some(DEMO_ADMIN),
        });
        let theme = block * 10 + 1;
        builds.push(BuildRequest {
            name: format!("Theme {theme}"),
            description: None,
            scope: PackageScope::Theme,
            year_id: Some(year),
            block_id: Some(block),
            theme_id: Some(theme),
            publish: true,
            created_by: Some(DEMO_ADMIN),
        });
    }
    for build in builds {
        packages::build_package(db, build).await?;
    }
    Ok(true)
}

/// The demo student's grants: the first years, so the packages of those years open and
/// the whole programme and the later years do not. Granted on every start (an equal grant
/// in force is kept, so nothing doubles).
pub const DEMO_GRANT_YEARS: [i32; 2] = [1, 2];

pub async fn ensure_demo_grants(db: &DatabaseConnection) -> AppResult<()> {
    for year in DEMO_GRANT_YEARS {
        let grant = NewGrant::new(
            DEMO_STUDENT,
            PackageScope::Year,
            Some(year),
            None,
            None,
            None,
            None,
        )?;
        grants::grant(db, grant).await?;
    }
    Ok(())
}

/// Which demo packages the demo student reads and which they do not, for the banner.
pub async fn access_summary(app: &App) -> AppResult<String> {
    let student = AuthUser {
        id: DEMO_STUDENT,
        role: Role::Student,
        access: None,
    };
    let filter = ListFilter::default();
    let readable: std::collections::HashSet<PackageId> =
        crate::access::gate::list_readable(app, &student, &filter)
            .await?
            .iter()
            .map(|p| p.id)
            .collect();
    let mut open = Vec::new();
    let mut closed = Vec::new();
    for package in packages::list_published(&app.db, &filter).await? {
        let line = format!("{} (v{}, {})", package.name, package.version, package.id);
        if readable.contains(&package.id) {
            open.push(line);
        } else {
            closed.push(line);
        }
    }
    let years = DEMO_GRANT_YEARS.map(|y| y.to_string()).join(" and ");
    Ok(format!(
        "  access:        EXAMSYNC_ACCESS={}; the demo student holds YEAR grants for years {years}\n\n  the student reads:\n    {}\n\n  the student gets 403 ACCESS_DENIED for:\n    {}\n",
        match app.access.mode() {
            crate::access::AccessMode::Grants => "grants",
            crate::access::AccessMode::Open => "open (every package is readable)",
        },
        if open.is_empty() {
            "(none)".to_owned()
        } else {
            open.join("\n    ")
        },
        if closed.is_empty() {
            "(none)".to_owned()
        } else {
            closed.join("\n    ")
        },
    ))
}

/// The demo banner: tokens for a student and an admin, and URLs to try.
pub fn banner(secret: &str, base_url: &str) -> AppResult<String> {
    let day = 24 * 3600;
    let student = sign_token(secret, DEMO_STUDENT, Role::Student, day)?;
    let admin = sign_token(secret, DEMO_ADMIN, Role::Admin, day)?;
    Ok(format!(
        "\nexamsync demo is ready\n\
         \n  student token: {student}\n  admin token:   {admin}\n\
         \n  GraphiQL:      {base_url}/graphql   (paste `{{\"Authorization\": \"Bearer <token>\"}}` into Headers)\n\
         \n  packages:      curl -H 'Authorization: Bearer {student}' {base_url}/api/v1/tests/packages\n\
         \n  health:        {base_url}/readyz    metrics: {base_url}/metrics\n\
         \n  (tokens are valid for 24 hours; restart to get new ones)\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_bank_is_large_and_valid() {
        let items = demo_questions();
        assert!(items.len() >= 2000, "{}", items.len());
        questions::validate(&items).unwrap();
        let years: std::collections::HashSet<_> = items.iter().map(|q| q.year_id).collect();
        assert!(years.len() >= 3);
    }
}
