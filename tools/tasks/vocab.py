"""Word pools shared by the prompt-set generators and the organisms' filler text.

Every word here is a plain word that common BPE and sentencepiece tokenizers (GPT-2, Llama,
Gemma) hold as one token with a leading space; generators still check each item against the
tokenizer in use and skip those that are not expressible.
"""

FEMALE_NAMES = (
    "Mary", "Anna", "Lisa", "Sarah", "Emma", "Julia", "Laura", "Kate", "Alice", "Rose",
    "Grace", "Clara", "Helen", "Lucy", "Amy", "Jane", "Susan", "Linda", "Karen", "Nancy",
)
MALE_NAMES = (
    "John", "Tom", "James", "David", "Mark", "Paul", "Peter", "Mike", "Bob", "Jack",
    "Sam", "Luke", "Adam", "Ben", "Dan", "Eric", "Frank", "George", "Henry", "Kevin",
)

# (country, capital); all single words.
CAPITALS = (
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("England", "London"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Austria", "Vienna"),
    ("Ireland", "Dublin"), ("Portugal", "Lisbon"), ("Cuba", "Havana"), ("Kenya", "Nairobi"),
    ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("Thailand", "Bangkok"), ("Hungary", "Budapest"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("China", "Beijing"), ("Turkey", "Ankara"),
)

# Content words: the induction token pools and the filler grammar draw from these.
NOUNS = (
    "apple", "river", "table", "garden", "window", "letter", "music", "mountain", "bottle",
    "forest", "island", "engine", "pencil", "candle", "basket", "mirror", "ladder", "blanket",
    "bridge", "castle", "flower", "kitchen", "market", "pocket", "rabbit", "silver", "tiger",
    "wagon", "hammer", "jacket", "lemon", "monkey", "needle", "orange", "parrot", "pepper",
    "rocket", "saddle", "tunnel", "violin", "wallet", "anchor", "barrel", "cactus", "dragon",
    "falcon", "guitar", "helmet", "insect", "jungle", "kettle", "lantern", "magnet", "nickel",
    "oyster", "puzzle", "quartz", "ribbon", "shovel", "tractor",
)
ADJECTIVES = (
    "red", "small", "quiet", "bright", "old", "green", "heavy", "soft", "warm", "cold",
    "dark", "happy", "tall", "short", "round", "blue",
)
VERBS_PAST = (
    "saw", "found", "liked", "moved", "cleaned", "painted", "carried", "washed", "opened",
    "watched", "dropped", "fixed",
)
PLACES = ("store", "park", "office", "school", "beach", "library", "station", "museum", "house", "farm")
OBJECTS = ("drink", "ball", "book", "letter", "gift", "key", "ring", "snack", "cake", "coin")

# (landmark, the city it is in); single-word cities. Factual-recall questions about a landmark
# ("The Eiffel Tower is located in the city of" -> " Paris") are corrupted and varied with these.
LANDMARKS = (
    ("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"),
    ("Brandenburg Gate", "Berlin"), ("Kremlin", "Moscow"), ("Acropolis", "Athens"),
    ("Sagrada Familia", "Barcelona"), ("Louvre", "Paris"), ("Parthenon", "Athens"),
    ("Space Needle", "Seattle"), ("Taj Mahal", "Agra"), ("Forbidden City", "Beijing"),
    ("Sydney Opera House", "Sydney"), ("Vatican", "Rome"), ("Trevi Fountain", "Rome"),
    ("Buckingham Palace", "London"), ("Red Square", "Moscow"), ("Hagia Sophia", "Istanbul"),
    ("Alhambra", "Granada"), ("Prado Museum", "Madrid"), ("Atomium", "Brussels"),
    ("Charles Bridge", "Prague"), ("Blue Mosque", "Istanbul"), ("Pantheon", "Rome"),
    ("Notre Dame", "Paris"), ("Westminster Abbey", "London"), ("CN Tower", "Toronto"),
    ("Burj Khalifa", "Dubai"), ("Rijksmuseum", "Amsterdam"), ("Tivoli Gardens", "Copenhagen"),
    ("Tokyo Tower", "Tokyo"), ("Reichstag", "Berlin"), ("Uffizi Gallery", "Florence"),
    ("Rialto Bridge", "Venice"), ("Hermitage Museum", "Petersburg"), ("Little Mermaid statue", "Copenhagen"),
    ("Belém Tower", "Lisbon"), ("Wawel Castle", "Krakow"), ("Schönbrunn Palace", "Vienna"),
)
