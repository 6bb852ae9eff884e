"""Vocabulary of the synthetic world: common first and last names per name pool, group and event templates.

Names are real common names, written here (no download). Lists are in rough frequency order: the sampler
gives earlier names more weight (Zipf), so "John Smith" exists in many cities while rarer pairs are unique.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES: dict[str, tuple[str, ...]] = {
    "en": _words(
        """James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard Susan
        Joseph Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa Matthew Betty Anthony Margaret
        Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Carol Kevin
        Amanda Brian Dorothy George Melissa Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey
        Laura Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen Brenda
        Larry Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel Katherine Gregory Christine
        Alexander Debra Frank Rachel Patrick Carolyn Raymond Janet Jack Catherine Dennis Maria Jerry Heather
        Tyler Diane Aaron Ruth Jose Julie Adam Olivia Nathan Joyce Henry Virginia Douglas Victoria Zachary Kelly
        Peter Lauren Kyle Christina Noah Joan Ethan Evelyn Jeremy Judith Walter Megan Christian Andrea Keith
        Cheryl Roger Hannah Terry Jacqueline Austin Martha Sean Gloria Gerald Teresa Carl Ann Harold Sara Dylan
        Madison Arthur Frances Lawrence Kathryn Jordan Janice Jesse Jean Bryan Abigail Billy Alice Bruce Judy
        Gabriel Sophia Joe Grace Logan Denise Albert Amber Willie Doris Alan Marilyn Eugene Danielle Russell
        Beverly Vincent Isabella Bobby Theresa Johnny Diana Bradley Natalie Kasie Kacey Casey Kaci Chloe Oliver"""
    ),
    "es": _words(
        """Jose Maria Antonio Carmen Manuel Ana Francisco Isabel Juan Laura David Cristina Javier Marta Daniel
        Lucia Carlos Elena Miguel Pilar Alejandro Sara Rafael Paula Pedro Rosa Pablo Raquel Sergio Beatriz
        Fernando Dolores Jorge Teresa Luis Andrea Alberto Silvia Alvaro Patricia Adrian Sofia Diego Valeria
        Ricardo Camila Eduardo Gabriela Mario Fernanda Ramon Ximena Enrique Guadalupe Victor Alejandra Hugo
        Mariana Jesus Veronica Roberto Lorena Andres Natalia"""
    ),
    "de": _words(
        """Peter Ursula Michael Sabine Thomas Monika Andreas Petra Wolfgang Claudia Klaus Susanne Juergen Andrea
        Stefan Birgit Christian Karin Uwe Heike Frank Nicole Markus Stefanie Matthias Julia Alexander Katrin
        Martin Anja Lukas Lena Leon Anna Jonas Laura Felix Lea Maximilian Sophie Paul Hannah Tobias Marie
        Florian Johanna Sebastian Katharina Dieter Gisela Horst Renate Manfred Helga Jan Lisa Tim Sarah"""
    ),
    "fr": _words(
        """Jean Marie Pierre Nathalie Michel Isabelle Philippe Sylvie Alain Catherine Nicolas Martine Christophe
        Christine Patrick Francoise Daniel Valerie Laurent Sandrine Thierry Stephanie Julien Celine Sebastien
        Sophie Olivier Aurelie Frederic Emilie Eric Camille Thomas Manon Antoine Chloe Hugo Ines Louis Lea
        Lucas Juliette Mathieu Claire Guillaume Elodie Maxime Pauline Vincent Amandine Romain Margaux"""
    ),
    "pt": _words(
        """Maria Jose Ana Joao Francisca Antonio Antonia Francisco Adriana Carlos Juliana Paulo Marcia Pedro
        Fernanda Lucas Patricia Luiz Aline Marcos Sandra Luis Camila Gabriel Amanda Rafael Bruna Daniel Jessica
        Marcelo Leticia Bruno Julia Eduardo Luciana Felipe Vanessa Raimundo Mariana Rodrigo Gabriela Manoel
        Beatriz Mateus Larissa Thiago Rafaela Gustavo Tatiana Miguel Carolina"""
    ),
    "it": _words(
        """Giuseppe Maria Giovanni Anna Antonio Giuseppina Mario Rosa Luigi Angela Francesco Giovanna Angelo
        Teresa Vincenzo Lucia Pietro Carmela Salvatore Caterina Carlo Francesca Franco Anna Domenico Antonietta
        Bruno Carla Paolo Elena Michele Concetta Giorgio Rita Aldo Margherita Sergio Franca Luca Paola Marco
        Giulia Alessandro Chiara Andrea Sara Matteo Federica Lorenzo Martina Davide Alessia"""
    ),
    "hi": _words(
        """Aarav Aadhya Vivaan Ananya Aditya Diya Vihaan Saanvi Arjun Pari Sai Anika Ayaan Navya Krishna Myra
        Ishaan Sara Shaurya Aarohi Rahul Priya Amit Pooja Rajesh Neha Suresh Sunita Vikram Kavita Anil Anjali
        Sanjay Deepika Ravi Meena Manoj Lakshmi Arun Divya Ramesh Swati Ajay Nisha Vijay Rekha Kiran Shreya"""
    ),
}

LAST_NAMES: dict[str, tuple[str, ...]] = {
    "en": _words(
        """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez
        Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez
        Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker
        Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins
        Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly
        Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes
        Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan
        Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander
        Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina
        Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy
        Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon
        Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose"""
    ),
    "es": _words(
        """Garcia Rodriguez Gonzalez Fernandez Lopez Martinez Sanchez Perez Gomez Martin Jimenez Ruiz Hernandez
        Diaz Moreno Alvarez Munoz Romero Alonso Gutierrez Navarro Torres Dominguez Vazquez Ramos Gil Ramirez
        Serrano Blanco Molina Morales Suarez Ortega Delgado Castro Ortiz Rubio Marin Sanz Nunez Iglesias Medina
        Garrido Cortes Castillo Santos Lozano Guerrero Cano Prieto Mendez Cruz Flores Herrera Reyes Aguilar"""
    ),
    "de": _words(
        """Mueller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schaefer Koch Bauer Richter
        Klein Wolf Schroeder Neumann Schwarz Zimmermann Braun Krueger Hofmann Hartmann Lange Schmitt Werner
        Schmitz Krause Meier Lehmann Schmid Schulze Maier Koehler Herrmann Koenig Walter Mayer Huber Kaiser
        Fuchs Peters Lang Scholz Moeller Weiss Jung Hahn Schubert Vogel Friedrich Keller Guenther Frank Berger"""
    ),
    "fr": _words(
        """Martin Bernard Thomas Petit Robert Richard Durand Dubois Moreau Laurent Simon Michel Lefebvre Leroy
        Roux David Bertrand Morel Fournier Girard Bonnet Dupont Lambert Fontaine Rousseau Vincent Muller Lefevre
        Faure Andre Mercier Blanc Guerin Boyer Garnier Chevalier Francois Legrand Gauthier Garcia Perrin Robin
        Clement Morin Nicolas Henry Roussel Mathieu Gautier Masson Marchand Duval Denis Dumont Marie Lemaire"""
    ),
    "pt": _words(
        """Silva Santos Oliveira Souza Rodrigues Ferreira Alves Pereira Lima Gomes Costa Ribeiro Martins Carvalho
        Almeida Lopes Soares Fernandes Vieira Barbosa Rocha Dias Nascimento Andrade Moreira Nunes Marques Machado
        Mendes Freitas Cardoso Ramos Goncalves Santana Teixeira Araujo Pinto Correia Moura Cavalcanti Monteiro
        Batista Campos Reis Duarte Castro Miranda Azevedo Barros Melo"""
    ),
    "it": _words(
        """Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo Conti DeLuca Mancini
        Costa Giordano Rizzo Lombardi Moretti Barbieri Fontana Santoro Mariani Rinaldi Caruso Ferrara Galli
        Martini Leone Longo Gentile Martinelli Vitale Lombardo Serra Coppola DeSantis DAngelo Marchetti Parisi
        Villa Conte Ferraro Ferri Fabbri Bianco Marini Grasso Valentini Messina Sala"""
    ),
    "hi": _words(
        """Sharma Verma Gupta Singh Kumar Patel Shah Mehta Joshi Reddy Rao Nair Iyer Menon Pillai Das Bose
        Chatterjee Banerjee Mukherjee Ghosh Sen Jain Agarwal Bansal Malhotra Kapoor Khanna Chopra Arora Bhatia
        Sethi Saxena Mishra Pandey Tiwari Dubey Yadav Chauhan Thakur Naidu Desai Kulkarni Pawar Jadhav"""
    ),
}

# Which name pool a country's people draw from (others: by language, then English).
COUNTRY_POOL = {
    "US": "en", "GB": "en", "CA": "en", "AU": "en", "IE": "en", "NZ": "en", "ES": "es", "MX": "es", "AR": "es",
    "CO": "es", "CL": "es", "PE": "es", "DE": "de", "AT": "de", "CH": "de", "FR": "fr", "BE": "fr", "BR": "pt",
    "PT": "pt", "IT": "it", "IN": "hi",
}
POOLS = tuple(FIRST_NAMES)


def pool_for(country: str, language: str | None) -> str:
    if country in COUNTRY_POOL:
        return COUNTRY_POOL[country]
    return language if language in FIRST_NAMES else "en"


# --------------------------------------------------------------------------- groups and events

TOPICS = (
    "Runners", "Hiking", "Yoga", "Chess", "Photography", "Gardening", "Knitting", "Baking", "Cycling",
    "Book", "Board Game", "Salsa", "Jazz", "Vintage Car", "Mini Cooper", "VW Beetle", "Harley Davidson",
    "Dog Lovers", "Cat Lovers", "Moms", "Dads", "Startup", "Python", "Crypto", "Real Estate", "Buy and Sell",
    "Free Stuff", "Lost and Found", "Soccer", "Basketball", "Tennis", "Volleyball", "Climbing", "Surfing",
    "Skateboarding", "Fishing", "Camping", "Birdwatching", "Vegan", "Foodies", "Wine", "Craft Beer", "Coffee",
    "Anime", "Gaming", "Film", "Theater", "Choir", "Guitar", "Drummers", "Poetry", "Writers", "Painting",
    "Pottery", "Sewing", "Quilting", "Woodworking", "Aquarium", "Beekeeping", "Astronomy", "History",
    "Genealogy", "Language Exchange", "Expats", "Students", "Alumni", "Nurses", "Teachers", "Veterans",
    "Volunteers", "Marathon", "Triathlon", "CrossFit", "Pilates", "Meditation", "Parents", "Single Parents",
    "Twin Parents", "Golf", "Swimming", "Rowing", "Sailing", "Motorcycle", "Jeep", "Tesla Owners", "Vinyl",
    "Comic Book", "Lego", "Drone", "Ham Radio", "Trivia", "Karaoke", "Dance", "Tango", "Ukulele", "Flea Market",
)
GROUP_NOUNS = (
    "Club", "Group", "Society", "Community", "Network", "Circle", "Collective", "Meetup", "Lovers",
    "Enthusiasts", "Owners", "Fans", "Friends", "Association",
)
DIRECTIONS = ("NW", "NE", "SW", "SE", "North", "South", "East", "West", "Downtown", "Central")
CRAFTS = (
    "Creations", "Crafts", "Bakery", "Kitchen", "Designs", "Boutique", "Studio", "Garden", "Treasures", "Cakes",
    "Jewelry", "Photography", "Salon", "Candles", "Pottery", "Cookies", "Quilts", "Soaps", "Flowers",
)
PLACES = ("Park", "Library", "Zoo", "Museum", "Beach", "Lake", "Market", "Botanical Garden", "Theater")
EVENT_KINDS = (
    "Meetup", "Night", "Festival", "Workshop", "Tournament", "Fair", "Party", "Picnic", "Conference",
    "Open Day", "Marathon", "Concert", "Swap", "Cleanup", "Gala",
)
EVENT_QUALIFIERS = ("Annual", "Monthly", "Summer", "Spring", "Weekend", "Charity", "Grand", "Winter")
PERSONAL_EVENTS = ("Birthday Party", "Wedding", "Farewell Party", "Housewarming", "Baby Shower", "Graduation Party")

# Words a searcher may leave out (or add) without changing what they mean; city/region names count too.
OPTIONAL_TERMS = frozenset(
    w.lower()
    for w in (*GROUP_NOUNS, *DIRECTIONS, *EVENT_QUALIFIERS, "the", "of", "and", "official", "page", "in")
)
EXTRA_TERMS = ("group", "page", "official", "club", "nw", "near me", "community", "events", "fb")

# Group title templates; weights favour the ambiguous ones (no city in the title).
# Fields: {topic} {noun} {city} {region} {dir} {first} {craft} {place}
GROUP_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{topic} {noun}", 0.30),
    ("{city} {topic} {noun}", 0.16),
    ("{topic} {noun} {dir}", 0.10),
    ("{first}'s {craft}", 0.14),
    ("{topic} of {city}", 0.07),
    ("{city} {topic}", 0.07),
    ("{topic} {region}", 0.05),
    ("Friends of {city} {place}", 0.04),
    ("The {topic} {noun}", 0.07),
)
EVENT_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{topic} {kind}", 0.30),
    ("{city} {topic} {kind}", 0.15),
    ("{qualifier} {topic} {kind}", 0.20),
    ("{first}'s {personal}", 0.20),
    ("{topic} {kind} {city}", 0.15),
)
