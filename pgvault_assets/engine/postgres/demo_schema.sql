-- Muslim Companion: the demo database pgvault sets up when no DATABASE_URL is given.
--
-- It looks like the back end of a small Quran-reading app, so that backups and restores have
-- something realistic to carry: Arabic text, JSON, enums, foreign keys and a second schema.
-- Every row is generated deterministically (no random(), no now()), so two demo databases made
-- from this file hold exactly the same data.
--
-- Load into an empty database with:  psql -X -v ON_ERROR_STOP=1 -d <db> -f demo_schema.sql

SET client_encoding = 'UTF8';
SET client_min_messages = warning;

CREATE SCHEMA audit;
COMMENT ON SCHEMA audit IS 'Security-relevant events, kept apart from application data.';

CREATE TYPE public.revelation_place AS ENUM ('meccan', 'medinan');
CREATE TYPE public.reading_theme AS ENUM ('light', 'dark', 'sepia');
CREATE TYPE audit.auth_event_kind AS ENUM (
    'sign_up', 'sign_in', 'sign_in_failed', 'sign_out', 'password_reset'
);

-- Reference data: the Quran -------------------------------------------------------------------

CREATE TABLE public.surahs (
    id                  smallint PRIMARY KEY CHECK (id BETWEEN 1 AND 114),
    name_arabic         text NOT NULL,
    name_transliterated text NOT NULL,
    name_english        text NOT NULL,
    verse_count         smallint NOT NULL CHECK (verse_count > 0),
    revelation          public.revelation_place NOT NULL
);

CREATE TABLE public.verses (
    surah_id    smallint NOT NULL REFERENCES public.surahs (id),
    ayah        smallint NOT NULL CHECK (ayah > 0),
    text_arabic text NOT NULL,
    PRIMARY KEY (surah_id, ayah)
);

CREATE TABLE public.translations (
    surah_id smallint NOT NULL,
    ayah     smallint NOT NULL,
    language text NOT NULL,
    text     text NOT NULL,
    PRIMARY KEY (surah_id, ayah, language),
    FOREIGN KEY (surah_id, ayah) REFERENCES public.verses (surah_id, ayah)
);

-- Application data ----------------------------------------------------------------------------

CREATE TABLE public.users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz
);

CREATE TABLE public.profiles (
    user_id      bigint PRIMARY KEY REFERENCES public.users (id) ON DELETE CASCADE,
    display_name text NOT NULL,
    country_code char(2),
    bio          text
);

CREATE TABLE public.preferences (
    user_id        bigint PRIMARY KEY REFERENCES public.users (id) ON DELETE CASCADE,
    language       text NOT NULL DEFAULT 'en',
    theme          public.reading_theme NOT NULL DEFAULT 'light',
    font_scale     numeric(3, 2) NOT NULL DEFAULT 1.00,
    reciter        text,
    daily_reminder time,
    extra          jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE public.bookmarks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    surah_id   smallint NOT NULL REFERENCES public.surahs (id),
    ayah       smallint NOT NULL CHECK (ayah > 0),
    created_at timestamptz NOT NULL,
    UNIQUE (user_id, surah_id, ayah)
);

CREATE TABLE public.notes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    bookmark_id bigint REFERENCES public.bookmarks (id) ON DELETE SET NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz
);

CREATE TABLE audit.auth_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint REFERENCES public.users (id) ON DELETE SET NULL,
    kind        audit.auth_event_kind NOT NULL,
    ip_address  inet NOT NULL,
    user_agent  text,
    happened_at timestamptz NOT NULL
);

CREATE INDEX bookmarks_user_id_idx ON public.bookmarks (user_id);
CREATE INDEX notes_user_id_idx ON public.notes (user_id);
CREATE INDEX auth_events_user_time_idx ON audit.auth_events (user_id, happened_at);

CREATE VIEW public.most_bookmarked_verses AS
SELECT b.surah_id, b.ayah, s.name_transliterated, count(*) AS bookmarks
FROM public.bookmarks b
JOIN public.surahs s ON s.id = b.surah_id
GROUP BY b.surah_id, b.ayah, s.name_transliterated;

-- Surahs --------------------------------------------------------------------------------------

INSERT INTO public.surahs (id, name_arabic, name_transliterated, name_english, verse_count, revelation)
VALUES
    (1, 'الفاتحة', 'Al-Fatihah', 'The Opening', 7, 'meccan'),
    (2, 'البقرة', 'Al-Baqarah', 'The Cow', 286, 'medinan'),
    (3, 'آل عمران', 'Ali ''Imran', 'The Family of Imran', 200, 'medinan'),
    (4, 'النساء', 'An-Nisa', 'The Women', 176, 'medinan'),
    (5, 'المائدة', 'Al-Ma''idah', 'The Table Spread', 120, 'medinan'),
    (6, 'الأنعام', 'Al-An''am', 'The Cattle', 165, 'meccan'),
    (7, 'الأعراف', 'Al-A''raf', 'The Heights', 206, 'meccan'),
    (8, 'الأنفال', 'Al-Anfal', 'The Spoils of War', 75, 'medinan'),
    (9, 'التوبة', 'At-Tawbah', 'The Repentance', 129, 'medinan'),
    (10, 'يونس', 'Yunus', 'Jonah', 109, 'meccan'),
    (11, 'هود', 'Hud', 'Hud', 123, 'meccan'),
    (12, 'يوسف', 'Yusuf', 'Joseph', 111, 'meccan'),
    (13, 'الرعد', 'Ar-Ra''d', 'The Thunder', 43, 'medinan'),
    (14, 'إبراهيم', 'Ibrahim', 'Abraham', 52, 'meccan'),
    (15, 'الحجر', 'Al-Hijr', 'The Rocky Tract', 99, 'meccan'),
    (16, 'النحل', 'An-Nahl', 'The Bee', 128, 'meccan'),
    (17, 'الإسراء', 'Al-Isra', 'The Night Journey', 111, 'meccan'),
    (18, 'الكهف', 'Al-Kahf', 'The Cave', 110, 'meccan'),
    (19, 'مريم', 'Maryam', 'Mary', 98, 'meccan'),
    (20, 'طه', 'Taha', 'Ta-Ha', 135, 'meccan'),
    (21, 'الأنبياء', 'Al-Anbya', 'The Prophets', 112, 'meccan'),
    (22, 'الحج', 'Al-Hajj', 'The Pilgrimage', 78, 'medinan'),
    (23, 'المؤمنون', 'Al-Mu''minun', 'The Believers', 118, 'meccan'),
    (24, 'النور', 'An-Nur', 'The Light', 64, 'medinan'),
    (25, 'الفرقان', 'Al-Furqan', 'The Criterion', 77, 'meccan'),
    (26, 'الشعراء', 'Ash-Shu''ara', 'The Poets', 227, 'meccan'),
    (27, 'النمل', 'An-Naml', 'The Ant', 93, 'meccan'),
    (28, 'القصص', 'Al-Qasas', 'The Stories', 88, 'meccan'),
    (29, 'العنكبوت', 'Al-''Ankabut', 'The Spider', 69, 'meccan'),
    (30, 'الروم', 'Ar-Rum', 'The Romans', 60, 'meccan'),
    (31, 'لقمان', 'Luqman', 'Luqman', 34, 'meccan'),
    (32, 'السجدة', 'As-Sajdah', 'The Prostration', 30, 'meccan'),
    (33, 'الأحزاب', 'Al-Ahzab', 'The Combined Forces', 73, 'medinan'),
    (34, 'سبأ', 'Saba', 'Sheba', 54, 'meccan'),
    (35, 'فاطر', 'Fatir', 'The Originator', 45, 'meccan'),
    (36, 'يس', 'Ya-Sin', 'Ya Sin', 83, 'meccan'),
    (37, 'الصافات', 'As-Saffat', 'Those Who Set the Ranks', 182, 'meccan'),
    (38, 'ص', 'Sad', 'The Letter Sad', 88, 'meccan'),
    (39, 'الزمر', 'Az-Zumar', 'The Troops', 75, 'meccan'),
    (40, 'غافر', 'Ghafir', 'The Forgiver', 85, 'meccan'),
    (41, 'فصلت', 'Fussilat', 'Explained in Detail', 54, 'meccan'),
    (42, 'الشورى', 'Ash-Shuraa', 'The Consultation', 53, 'meccan'),
    (43, 'الزخرف', 'Az-Zukhruf', 'The Ornaments of Gold', 89, 'meccan'),
    (44, 'الدخان', 'Ad-Dukhan', 'The Smoke', 59, 'meccan'),
    (45, 'الجاثية', 'Al-Jathiyah', 'The Crouching', 37, 'meccan'),
    (46, 'الأحقاف', 'Al-Ahqaf', 'The Wind-Curved Sandhills', 35, 'meccan'),
    (47, 'محمد', 'Muhammad', 'Muhammad', 38, 'medinan'),
    (48, 'الفتح', 'Al-Fath', 'The Victory', 29, 'medinan'),
    (49, 'الحجرات', 'Al-Hujurat', 'The Rooms', 18, 'medinan'),
    (50, 'ق', 'Qaf', 'The Letter Qaf', 45, 'meccan'),
    (51, 'الذاريات', 'Adh-Dhariyat', 'The Winnowing Winds', 60, 'meccan'),
    (52, 'الطور', 'At-Tur', 'The Mount', 49, 'meccan'),
    (53, 'النجم', 'An-Najm', 'The Star', 62, 'meccan'),
    (54, 'القمر', 'Al-Qamar', 'The Moon', 55, 'meccan'),
    (55, 'الرحمن', 'Ar-Rahman', 'The Most Merciful', 78, 'medinan'),
    (56, 'الواقعة', 'Al-Waqi''ah', 'The Inevitable', 96, 'meccan'),
    (57, 'الحديد', 'Al-Hadid', 'The Iron', 29, 'medinan'),
    (58, 'المجادلة', 'Al-Mujadila', 'The Pleading Woman', 22, 'medinan'),
    (59, 'الحشر', 'Al-Hashr', 'The Exile', 24, 'medinan'),
    (60, 'الممتحنة', 'Al-Mumtahanah', 'She That Is To Be Examined', 13, 'medinan'),
    (61, 'الصف', 'As-Saf', 'The Ranks', 14, 'medinan'),
    (62, 'الجمعة', 'Al-Jumu''ah', 'Friday', 11, 'medinan'),
    (63, 'المنافقون', 'Al-Munafiqun', 'The Hypocrites', 11, 'medinan'),
    (64, 'التغابن', 'At-Taghabun', 'The Mutual Disillusion', 18, 'medinan'),
    (65, 'الطلاق', 'At-Talaq', 'The Divorce', 12, 'medinan'),
    (66, 'التحريم', 'At-Tahrim', 'The Prohibition', 12, 'medinan'),
    (67, 'الملك', 'Al-Mulk', 'The Sovereignty', 30, 'meccan'),
    (68, 'القلم', 'Al-Qalam', 'The Pen', 52, 'meccan'),
    (69, 'الحاقة', 'Al-Haqqah', 'The Reality', 52, 'meccan'),
    (70, 'المعارج', 'Al-Ma''arij', 'The Ascending Stairways', 44, 'meccan'),
    (71, 'نوح', 'Nuh', 'Noah', 28, 'meccan'),
    (72, 'الجن', 'Al-Jinn', 'The Jinn', 28, 'meccan'),
    (73, 'المزمل', 'Al-Muzzammil', 'The Enshrouded One', 20, 'meccan'),
    (74, 'المدثر', 'Al-Muddaththir', 'The Cloaked One', 56, 'meccan'),
    (75, 'القيامة', 'Al-Qiyamah', 'The Resurrection', 40, 'meccan'),
    (76, 'الإنسان', 'Al-Insan', 'Man', 31, 'medinan'),
    (77, 'المرسلات', 'Al-Mursalat', 'The Emissaries', 50, 'meccan'),
    (78, 'النبأ', 'An-Naba', 'The Tidings', 40, 'meccan'),
    (79, 'النازعات', 'An-Nazi''at', 'Those Who Drag Forth', 46, 'meccan'),
    (80, 'عبس', '''Abasa', 'He Frowned', 42, 'meccan'),
    (81, 'التكوير', 'At-Takwir', 'The Overthrowing', 29, 'meccan'),
    (82, 'الانفطار', 'Al-Infitar', 'The Cleaving', 19, 'meccan'),
    (83, 'المطففين', 'Al-Mutaffifin', 'The Defrauding', 36, 'meccan'),
    (84, 'الانشقاق', 'Al-Inshiqaq', 'The Sundering', 25, 'meccan'),
    (85, 'البروج', 'Al-Buruj', 'The Mansions of the Stars', 22, 'meccan'),
    (86, 'الطارق', 'At-Tariq', 'The Night Comer', 17, 'meccan'),
    (87, 'الأعلى', 'Al-A''la', 'The Most High', 19, 'meccan'),
    (88, 'الغاشية', 'Al-Ghashiyah', 'The Overwhelming', 26, 'meccan'),
    (89, 'الفجر', 'Al-Fajr', 'The Dawn', 30, 'meccan'),
    (90, 'البلد', 'Al-Balad', 'The City', 20, 'meccan'),
    (91, 'الشمس', 'Ash-Shams', 'The Sun', 15, 'meccan'),
    (92, 'الليل', 'Al-Layl', 'The Night', 21, 'meccan'),
    (93, 'الضحى', 'Ad-Duhaa', 'The Morning Hours', 11, 'meccan'),
    (94, 'الشرح', 'Ash-Sharh', 'The Relief', 8, 'meccan'),
    (95, 'التين', 'At-Tin', 'The Fig', 8, 'meccan'),
    (96, 'العلق', 'Al-''Alaq', 'The Clot', 19, 'meccan'),
    (97, 'القدر', 'Al-Qadr', 'The Power', 5, 'meccan'),
    (98, 'البينة', 'Al-Bayyinah', 'The Clear Proof', 8, 'medinan'),
    (99, 'الزلزلة', 'Az-Zalzalah', 'The Earthquake', 8, 'medinan'),
    (100, 'العاديات', 'Al-''Adiyat', 'The Chargers', 11, 'meccan'),
    (101, 'القارعة', 'Al-Qari''ah', 'The Calamity', 11, 'meccan'),
    (102, 'التكاثر', 'At-Takathur', 'The Rivalry in Increase', 8, 'meccan'),
    (103, 'العصر', 'Al-''Asr', 'The Declining Day', 3, 'meccan'),
    (104, 'الهمزة', 'Al-Humazah', 'The Traducer', 9, 'meccan'),
    (105, 'الفيل', 'Al-Fil', 'The Elephant', 5, 'meccan'),
    (106, 'قريش', 'Quraysh', 'Quraysh', 4, 'meccan'),
    (107, 'الماعون', 'Al-Ma''un', 'The Small Kindnesses', 7, 'meccan'),
    (108, 'الكوثر', 'Al-Kawthar', 'The Abundance', 3, 'meccan'),
    (109, 'الكافرون', 'Al-Kafirun', 'The Disbelievers', 6, 'meccan'),
    (110, 'النصر', 'An-Nasr', 'The Divine Support', 3, 'medinan'),
    (111, 'المسد', 'Al-Masad', 'The Palm Fibre', 5, 'meccan'),
    (112, 'الإخلاص', 'Al-Ikhlas', 'The Sincerity', 4, 'meccan'),
    (113, 'الفلق', 'Al-Falaq', 'The Daybreak', 5, 'meccan'),
    (114, 'الناس', 'An-Nas', 'Mankind', 6, 'meccan');

-- Verses: the full text of a few short surahs, with an English rendering --------------------

INSERT INTO public.verses (surah_id, ayah, text_arabic) VALUES
    (1, 1, 'بِسْمِ ٱللَّهِ ٱلرَّحْمَٰنِ ٱلرَّحِيمِ'),
    (1, 2, 'ٱلْحَمْدُ لِلَّهِ رَبِّ ٱلْعَٰلَمِينَ'),
    (1, 3, 'ٱلرَّحْمَٰنِ ٱلرَّحِيمِ'),
    (1, 4, 'مَٰلِكِ يَوْمِ ٱلدِّينِ'),
    (1, 5, 'إِيَّاكَ نَعْبُدُ وَإِيَّاكَ نَسْتَعِينُ'),
    (1, 6, 'ٱهْدِنَا ٱلصِّرَٰطَ ٱلْمُسْتَقِيمَ'),
    (1, 7, 'صِرَٰطَ ٱلَّذِينَ أَنْعَمْتَ عَلَيْهِمْ غَيْرِ ٱلْمَغْضُوبِ عَلَيْهِمْ وَلَا ٱلضَّآلِّينَ'),
    (103, 1, 'وَٱلْعَصْرِ'),
    (103, 2, 'إِنَّ ٱلْإِنسَٰنَ لَفِى خُسْرٍ'),
    (103, 3, 'إِلَّا ٱلَّذِينَ ءَامَنُوا۟ وَعَمِلُوا۟ ٱلصَّٰلِحَٰتِ وَتَوَاصَوْا۟ بِٱلْحَقِّ وَتَوَاصَوْا۟ بِٱلصَّبْرِ'),
    (108, 1, 'إِنَّآ أَعْطَيْنَٰكَ ٱلْكَوْثَرَ'),
    (108, 2, 'فَصَلِّ لِرَبِّكَ وَٱنْحَرْ'),
    (108, 3, 'إِنَّ شَانِئَكَ هُوَ ٱلْأَبْتَرُ'),
    (112, 1, 'قُلْ هُوَ ٱللَّهُ أَحَدٌ'),
    (112, 2, 'ٱللَّهُ ٱلصَّمَدُ'),
    (112, 3, 'لَمْ يَلِدْ وَلَمْ يُولَدْ'),
    (112, 4, 'وَلَمْ يَكُن لَّهُۥ كُفُوًا أَحَدٌۢ'),
    (113, 1, 'قُلْ أَعُوذُ بِرَبِّ ٱلْفَلَقِ'),
    (113, 2, 'مِن شَرِّ مَا خَلَقَ'),
    (113, 3, 'وَمِن شَرِّ غَاسِقٍ إِذَا وَقَبَ'),
    (113, 4, 'وَمِن شَرِّ ٱلنَّفَّٰثَٰتِ فِى ٱلْعُقَدِ'),
    (113, 5, 'وَمِن شَرِّ حَاسِدٍ إِذَا حَسَدَ'),
    (114, 1, 'قُلْ أَعُوذُ بِرَبِّ ٱلنَّاسِ'),
    (114, 2, 'مَلِكِ ٱلنَّاسِ'),
    (114, 3, 'إِلَٰهِ ٱلنَّاسِ'),
    (114, 4, 'مِن شَرِّ ٱلْوَسْوَاسِ ٱلْخَنَّاسِ'),
    (114, 5, 'ٱلَّذِى يُوَسْوِسُ فِى صُدُورِ ٱلنَّاسِ'),
    (114, 6, 'مِنَ ٱلْجِنَّةِ وَٱلنَّاسِ');

INSERT INTO public.translations (surah_id, ayah, language, text) VALUES
    (1, 1, 'en', 'In the name of God, the Most Gracious, the Most Merciful.'),
    (1, 2, 'en', 'All praise is for God, Lord of all the worlds,'),
    (1, 3, 'en', 'the Most Gracious, the Most Merciful,'),
    (1, 4, 'en', 'Master of the Day of Judgement.'),
    (1, 5, 'en', 'You alone we worship, and You alone we ask for help.'),
    (1, 6, 'en', 'Guide us along the straight path,'),
    (1, 7, 'en', 'the path of those You have blessed, not of those who earned Your anger, nor of those who went astray.'),
    (103, 1, 'en', 'By the passage of time,'),
    (103, 2, 'en', 'surely humanity is in loss,'),
    (103, 3, 'en', 'except those who believe and do good, and urge one another to the truth and to patience.'),
    (108, 1, 'en', 'Indeed, We have granted you abundance.'),
    (108, 2, 'en', 'So pray to your Lord and sacrifice.'),
    (108, 3, 'en', 'Indeed, it is your enemy who is cut off.'),
    (112, 1, 'en', 'Say: He is God, the One,'),
    (112, 2, 'en', 'God, the Eternal Refuge.'),
    (112, 3, 'en', 'He has never had offspring, nor was He born,'),
    (112, 4, 'en', 'and there is none comparable to Him.'),
    (113, 1, 'en', 'Say: I seek refuge in the Lord of the daybreak'),
    (113, 2, 'en', 'from the evil of whatever He has created,'),
    (113, 3, 'en', 'and from the evil of the night when it grows dark,'),
    (113, 4, 'en', 'and from the evil of those who blow on knots,'),
    (113, 5, 'en', 'and from the evil of an envier when he envies.'),
    (114, 1, 'en', 'Say: I seek refuge in the Lord of humankind,'),
    (114, 2, 'en', 'the King of humankind,'),
    (114, 3, 'en', 'the God of humankind,'),
    (114, 4, 'en', 'from the evil of the lurking whisperer,'),
    (114, 5, 'en', 'who whispers into the hearts of humankind,'),
    (114, 6, 'en', 'from among jinn and humankind.');

-- Sample users: 600 accounts, each with a profile and preferences -----------------------------
-- Values are spread with modular arithmetic instead of random() so every load is identical.

INSERT INTO public.users (email, password_hash, created_at, last_seen_at)
SELECT
    format('user%s@example.com', lpad(g::text, 4, '0')),
    'demo$not-a-real-hash$' || md5('pgvault-demo-' || g),
    timestamptz '2024-01-01 00:00:00+00' + g * interval '11 hours 17 minutes',
    CASE WHEN g % 9 = 0 THEN NULL  -- signed up, never came back
         ELSE timestamptz '2024-01-01 00:00:00+00' + g * interval '11 hours 17 minutes'
              + (g % 97) * interval '1 day 3 hours' END
FROM generate_series(1, 600) AS g;

INSERT INTO public.profiles (user_id, display_name, country_code, bio)
SELECT
    u.id,
    CASE WHEN u.id % 2 = 0
         THEN (ARRAY['عائشة', 'عمر', 'فاطمة', 'يوسف', 'مريم', 'إبراهيم',
                     'خديجة', 'بلال', 'زينب', 'حمزة', 'آمنة', 'إدريس'])[1 + u.id % 12]
         ELSE (ARRAY['Aisha', 'Omar', 'Fatima', 'Yusuf', 'Maryam', 'Ibrahim',
                     'Khadija', 'Bilal', 'Zainab', 'Hamza', 'Amina', 'Idris'])[1 + u.id % 12]
    END || ' ' || (u.id % 100),
    (ARRAY['SA', 'EG', 'ID', 'PK', 'TR', 'MA', 'GB', 'US', 'MY', NULL])[1 + u.id % 10],
    CASE u.id % 5
        WHEN 0 THEN 'أحب قراءة القرآن بعد الفجر.'
        WHEN 1 THEN 'Learning Arabic one verse at a time.'
        WHEN 2 THEN NULL
        WHEN 3 THEN 'Memorising Juz'' Amma with my children.'
        ELSE 'طالب علم'
    END
FROM public.users u;

INSERT INTO public.preferences (user_id, language, theme, font_scale, reciter, daily_reminder, extra)
SELECT
    u.id,
    (ARRAY['en', 'ar', 'ur', 'id', 'tr', 'fr'])[1 + u.id % 6],
    (enum_range(NULL::public.reading_theme))[1 + u.id % 3],
    1.00 + (u.id % 6) * 0.25,
    (ARRAY['Mishary Alafasy', 'Abdul Basit', 'Saad Al-Ghamdi', 'Maher Al-Muaiqly', NULL])
        [1 + u.id % 5],
    CASE WHEN u.id % 4 = 0 THEN NULL
         ELSE time '04:30' + (u.id % 8) * interval '30 minutes' END,
    jsonb_build_object(
        'show_transliteration', u.id % 3 = 0,
        'translation_language', (ARRAY['en', 'ur', 'id', 'fr'])[1 + u.id % 4],
        'tajweed_colours', u.id % 2 = 0
    )
FROM public.users u;

-- Bookmarks: up to 5 per user, spread over all 114 surahs, ayah within each surah's length.

INSERT INTO public.bookmarks (user_id, surah_id, ayah, created_at)
SELECT
    u.id,
    s.id,
    1 + (u.id * 31 + k * 17) % s.verse_count,
    u.created_at + (k + 1) * interval '2 days 5 hours'
FROM public.users u
CROSS JOIN generate_series(1, 5) AS k
JOIN public.surahs s ON s.id = 1 + (u.id * 7 + k * k * 13) % 114
WHERE (u.id + k) % 4 <> 0
ON CONFLICT (user_id, surah_id, ayah) DO NOTHING;

-- Notes: reflections on every third bookmark, plus some free-standing notes.

INSERT INTO public.notes (user_id, bookmark_id, body, created_at, updated_at)
SELECT
    b.user_id,
    b.id,
    CASE b.id % 4
        WHEN 0 THEN 'تأملت في هذه الآية اليوم.'
        WHEN 1 THEN format('Reflection on %s:%s — come back to this after Maghrib.',
                           b.surah_id, b.ayah)
        WHEN 2 THEN format('Memorised %s:%s, review again on Friday.', b.surah_id, b.ayah)
        ELSE 'Beautiful recitation by my teacher.'
    END,
    b.created_at + interval '20 minutes',
    CASE WHEN b.id % 5 = 0 THEN b.created_at + interval '3 days' END
FROM public.bookmarks b
WHERE b.id % 3 = 0;

INSERT INTO public.notes (user_id, bookmark_id, body, created_at)
SELECT
    u.id,
    NULL,
    'Goal: read ' || (1 + u.id % 5) || ' pages every day.',
    u.created_at + interval '1 hour'
FROM public.users u
WHERE u.id % 4 = 1;

-- Audit: sign-ups, sign-ins and the occasional failed attempt -------------------------------

INSERT INTO audit.auth_events (user_id, kind, ip_address, user_agent, happened_at)
SELECT u.id, 'sign_up', inet '192.0.2.0' + u.id % 250, 'MuslimCompanion/1.0 (Android)', u.created_at
FROM public.users u;

INSERT INTO audit.auth_events (user_id, kind, ip_address, user_agent, happened_at)
SELECT
    u.id,
    CASE WHEN (u.id + k) % 11 = 0 THEN 'sign_in_failed'
         WHEN (u.id + k) % 7 = 0 THEN 'sign_out'
         WHEN (u.id * k) % 53 = 0 THEN 'password_reset'
         ELSE 'sign_in' END::audit.auth_event_kind,
    inet '198.51.100.0' + (u.id * k) % 250,
    (ARRAY['MuslimCompanion/1.0 (Android)', 'MuslimCompanion/1.0 (iOS)',
           'Mozilla/5.0 (X11; Linux x86_64)', NULL])[1 + (u.id + k) % 4],
    u.created_at + k * interval '1 day 2 hours 7 minutes'
FROM public.users u
CROSS JOIN generate_series(1, 4) AS k
WHERE u.last_seen_at IS NOT NULL;

-- Failed sign-ins for addresses that have no account.
INSERT INTO audit.auth_events (user_id, kind, ip_address, user_agent, happened_at)
SELECT NULL, 'sign_in_failed', inet '203.0.113.0' + g % 250, 'curl/8.5.0',
       timestamptz '2024-03-01 00:00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 150) AS g;

ANALYZE;
