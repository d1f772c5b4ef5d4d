"""Names for demo people: first and last names as they appear on an English primary school's
registers, combined by a seeded random choice, so the same seed always gives the same people."""

from __future__ import annotations

FIRST_NAMES = (
    "Aaliyah", "Abdul", "Adam", "Adebayo", "Aisha", "Alfie", "Alice", "Amara", "Amelia", "Amir",
    "Ana", "Andrew", "Anna", "Arjun", "Ava", "Ayesha", "Beth", "Bilal", "Bogdan", "Callum",
    "Caroline", "Charlotte", "Chidi", "Chloe", "Claire", "Connor", "Daisy", "Daniel", "David",
    "Deborah", "Declan", "Dylan", "Eilidh", "Elena", "Elif", "Ella", "Emily", "Emma", "Ethan",
    "Fatima", "Finley", "Florence", "Freya", "Gareth", "Georgia", "Grace", "Hamza", "Hannah",
    "Harry", "Hassan", "Holly", "Ibrahim", "Imogen", "Isaac", "Isla", "Jack", "Jacob", "James",
    "Jasmine", "Jessica", "Joanne", "Joseph", "Joshua", "Julia", "Karen", "Kasia", "Kemi", "Kieran",
    "Laura", "Leah", "Leo", "Lily", "Louise", "Lucy", "Luke", "Mariam", "Mark", "Marta", "Matthew",
    "Maya", "Megan", "Mia", "Michael", "Mohammed", "Naomi", "Nathan", "Niamh", "Nicola", "Noah",
    "Oliver", "Olivia", "Omar", "Oscar", "Patrick", "Paul", "Poppy", "Priya", "Rachel", "Rebecca",
    "Rhys", "Rosie", "Ruth", "Ryan", "Safiya", "Samuel", "Sara", "Sean", "Siân", "Sofia", "Stephen",
    "Tariq", "Thomas", "Tomasz", "Usman", "Victoria", "William", "Yusuf", "Zainab", "Zara", "Zoë",
)  # fmt: skip

LAST_NAMES = (
    "Adams", "Ahmed", "Ali", "Allen", "Anderson", "Baker", "Begum", "Bennett", "Brown", "Campbell",
    "Carter", "Chapman", "Chaudhry", "Clarke", "Collins", "Cooper", "Davies", "Dawson", "Edwards",
    "Ellis", "Evans", "Fisher", "Fletcher", "Foster", "Francis", "Gallagher", "Gordon", "Graham",
    "Green", "Hall", "Harris", "Harrison", "Hill", "Hughes", "Hussain", "Iqbal", "Jackson", "James",
    "Jones", "Kaur", "Kelly", "Khan", "King", "Kowalski", "Lee", "Lewis", "Lloyd", "Marshall",
    "Martin", "Mason", "Matthews", "Miah", "Mitchell", "Moore", "Morgan", "Morris", "Murphy",
    "Nowak", "O'Brien", "O'Connor", "Okafor", "Owen", "Palmer", "Parker", "Patel", "Phillips",
    "Price", "Rahman", "Reid", "Richards", "Roberts", "Robinson", "Rogers", "Russell", "Scott",
    "Shah", "Sharma", "Shaw", "Simpson", "Singh", "Smith", "Stevens", "Taylor", "Thomas", "Thompson",
    "Turner", "Walker", "Ward", "Watson", "White", "Williams", "Wilson", "Wood", "Wright", "Young",
    "Adeyemi", "Mensah", "Nguyen", "Popescu", "Da Silva", "Mahmood", "Lewis-Grant", "Obi",
)  # fmt: skip
